// The test DNS server (tests/dns/dns_server.py: dnslib, UDP and TCP on one
// loopback port) as a child process of a C++ test, serving the zones given
// as JSON; stopped when the object goes.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace portcullis::testing {

class dns_server {
 public:
  // `ttl`: the TTL of every record, seconds (else the server's default, 300);
  // `negative_soa` false: NXDOMAIN and NODATA answers come without an SOA.
  explicit dns_server(const std::string& zones_json, int ttl = -1, bool negative_soa = true) {
    char path[] = "/tmp/portcullis-zonesXXXXXX";
    const int fd = ::mkstemp(path);
    if (fd < 0) throw std::runtime_error("mkstemp");
    ::close(fd);
    zones_ = path;
    std::ofstream(zones_) << zones_json;
    const std::string ttl_text = std::to_string(ttl);
    std::vector<const char*> argv{"python3", PORTCULLIS_SOURCE_DIR "/tests/dns/dns_server.py", "--zones", zones_.c_str()};
    if (ttl >= 0) argv.insert(argv.end(), {"--ttl", ttl_text.c_str()});
    if (!negative_soa) argv.push_back("--no-soa");
    argv.push_back(nullptr);
    int out[2];
    if (::pipe(out) != 0) throw std::runtime_error("pipe");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a test that crashes takes its server along
      ::dup2(out[1], 1);
      ::close(out[0]);
      ::execv("/usr/bin/python3", const_cast<char* const*>(argv.data()));
      ::_exit(127);
    }
    ::close(out[1]);
    FILE* f = ::fdopen(out[0], "r");
    char line[128];
    while (std::fgets(line, sizeof line, f)) {
      if (std::sscanf(line, "PORT %d", &port_) == 1) break;
    }
    std::fclose(f);
    if (port_ == 0) throw std::runtime_error("the test DNS server did not start");
  }
  ~dns_server() {
    stop();
    std::remove(zones_.c_str());
  }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  std::string zones_;
  pid_t pid_ = 0;
  int port_ = 0;
};

}  // namespace portcullis::testing
