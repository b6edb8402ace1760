#!/usr/bin/env bash
# Installs every Debian package that building and testing Portcullis needs.
# Idempotent: apt-get runs only when something is missing.
set -euo pipefail

BUILD_PACKAGES=(
  build-essential cmake pkg-config
  libboost1.81-dev          # Asio with awaitable_operators (1.74 lacks them)
  libssl-dev libtoml11-dev libspdlog-dev libfmt-dev
  nlohmann-json3-dev        # [log] format = "json"
  prometheus-cpp-dev        # [metrics]: the Prometheus exposition
  pybind11-dev python3-dev libpython3.11-dev
  python3-redis             # pc.store's Redis backend ([store] url = "redis://...")
  libgtest-dev              # the build configures the C++ tests too
  libunbound-dev            # the DNS resolver (proxy/dns)
  libspf2-dev               # SPF (proxy/checks)
  libopendkim-dev           # OpenDKIM: the tests' second opinion on DKIM (tests/tools)
  libopendmarc-dev          # DMARC records (proxy/checks)
  libpsl-dev publicsuffix   # organizational domains: the Public Suffix List
  libidn2-dev               # internationalized domains as A-labels for SPF and DMARC (proxy/checks)
  libsodium-dev             # Ed25519 DKIM signatures (proxy/checks)
  libsystemd-dev            # sd_notify: readiness for systemd's Type=notify (packaging/systemd)
  swaks                     # the quick start's example client (README)
)
TEST_PACKAGES=(
  clang libclang-rt-14-dev                # libFuzzer, ASan/UBSan
  openssl                                 # test certificates
  python3-pytest python3-pytest-xdist     # the end-to-end tests run in parallel (pytest -n)
  groff-base man-db                       # the man pages render without warnings (tests/e2e/test_man_pages.py)
  python3-aiosmtpd swaks libnet-ssleay-perl   # swaks --tls needs Net::SSLeay
  postfix                                 # smtp-source/smtp-sink; a real upstream
  python3-dnslib python3-yaml             # the test DNS server (tests/dns) and the RFC 7208 suite's YAML
  python3-spf python3-dnspython python3-dns   # pyspf, the reference SPF the daemon is compared with
  python3-dkim python3-nacl                   # dkimpy: signs the DKIM tests' mail, the reference verifier
  python3-authheaders                         # the reference DMARC evaluation
  postsrsd                                    # SRS made by libsrs2's code: portcullis.srs must agree with it
  redis-server                                # pc.store's Redis backend, shared by two daemons in the tests
  haproxy                                     # the scale-out recipe's load balancer (PROXY v2; tests/e2e/test_scale_out.py)
  systemd                                     # systemd-analyze verify checks packaging/systemd/portcullis.service
)

BENCH_PACKAGES=(postfix)   # smtp-source and smtp-sink, Postfix's load tools
PACKAGE_PACKAGES=(dpkg-dev file)   # CPack's DEB generator: dpkg-shlibdeps (and file) find the Depends

want=("${BUILD_PACKAGES[@]}")
case "${1:-}" in
  --test) want+=("${TEST_PACKAGES[@]}" "${PACKAGE_PACKAGES[@]}") ;;   # tests/e2e/test_install.py builds a package
  --package) want+=("${PACKAGE_PACKAGES[@]}") ;;
  --bench) want+=("${BENCH_PACKAGES[@]}") ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  # Postfix must not ask questions or start a system MTA on port 25.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
