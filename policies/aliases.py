"""Alias expansion and forwarding, with SRS for forwarded mail.

Reads a Postfix virtual(5)-format file at load (so on start-up and on every
SIGHUP; a file with an error keeps the old policies and says where; a loop
is told as a warning, with its lines, and bounded where it is met).
Configure it in ``[aliases]`` (the defaults shown; ``file`` is required,
relative to the config file's folder):

    [aliases]
    file = "aliases"                 # lines "PATTERN  TARGET[, TARGET...]"
    local_domains = []               # domains this host receives mail for
    recipient_delimiter = "+"        # alice+tag@ is looked up as alice@ ("" for none; each character is one)
    propagate_extension = true       # alice+tag@ -> its targets with +tag added, as Postfix does
    max_depth = 20                   # nesting of aliases in aliases
    max_targets = 1000               # final addresses one recipient may expand to
    srs_secret = ""                  # set (a string, or a list: the first signs): forwarded mail gets an SRS sender
    srs_secret_file = ""             # or: a file with one secret a line (postsrsd's format)
    srs_domain = ""                  # the domain of SRS addresses (its MX must be this host); required with a secret
    srs_max_age = 21                 # days an SRS address is good for bounces
    srs_hash_length = 4              # characters of the hash (libsrs2 and postsrsd: 4)

List it in ``[policy] files`` after the policies that judge the recipient
the client gave (``greylist.py``, ``ratelimit.py``: a ``pc.redirect`` is
final, so those listed after this one never see a recipient that expands to
several addresses, nor an SRS bounce), and before those that should see the
rewritten recipient.

At each RCPT of a local domain (``local_domains``, the domains named in the
file, and ``srs_domain``):

- an SRS address of ``srs_domain`` is delivered to the original sender when
  its hash and age check out (a bounce finds its way home), else ``550
  5.1.1``;
- a recipient with an entry, or a catch-all for its domain, goes to what
  it expands to: one address is a ``pc.rewrite`` (the policies after this
  one decide on the new recipient), several a ``pc.redirect``; one that
  expands to itself alone is left to the next policy and the upstream;
- a recipient with neither gets ``550 5.1.1``;
- a loop met (the file's own, or one through catch-alls), or a bound
  passed, gets ``451 4.3.0`` (the mail waits while the table is fixed) and
  an error in the log.

When a recipient expands to an address outside the local domains, the
sender's domain is not local and SRS is configured, the envelope sender
becomes its SRS form, so that SPF at the next hop sees our domain. Mail
from ``<>`` keeps its null sender. A sender too long for an SRS address
(over 64 octets of local part once rewritten) keeps its own address, with a
warning in the log: the forward may then fail SPF at the next hop, as it
would without SRS, rather than wait in the sender's queue until it bounces. Recipients of other domains are left to
the next policy.
"""

from __future__ import annotations

import sys

import portcullis as pc
from portcullis._address import canonical_domain, mailbox_key
from portcullis.aliases import AliasError, AliasTable
from portcullis.settings import Settings
from portcullis.srs import SRS, SRSError, is_srs

_DEFAULTS = {
    "file": None,
    "local_domains": [],
    "recipient_delimiter": "+",
    "propagate_extension": True,
    "max_depth": 20,
    "max_targets": 1000,
    "srs_secret": "",
    "srs_secret_file": "",
    "srs_domain": "",
    "srs_max_age": 21,
    "srs_hash_length": 4,
}


def _settings() -> dict:
    table = Settings("aliases", _DEFAULTS)  # a typo must not silently turn a rule off
    if not table["file"] or not isinstance(table["file"], str):
        raise ValueError("[aliases] file: the alias file is required")
    settings = {"file": table["file"], "local_domains": table.strings("local_domains"),
                "propagate_extension": table.boolean("propagate_extension"), "srs_secret": table["srs_secret"]}
    settings.update({key: table.string(key) for key in ("recipient_delimiter", "srs_secret_file", "srs_domain")})
    for key, low in (("max_depth", 1), ("max_targets", 1), ("srs_max_age", 0), ("srs_hash_length", 1)):
        settings[key] = table.integer(key, low, sys.maxsize)
    return settings


def _srs(settings: dict) -> SRS | None:
    secrets = settings["srs_secret"]
    if isinstance(secrets, str):
        secrets = [secrets] if secrets else []
    if not isinstance(secrets, list) or not all(isinstance(s, str) and s for s in secrets):
        raise ValueError("[aliases] srs_secret: want a string or a list of non-empty strings")
    if settings["srs_secret_file"]:
        if secrets:
            raise ValueError("[aliases]: srs_secret and srs_secret_file both set; keep one")
        path = pc.path(settings["srs_secret_file"])
        try:
            # As postsrsd reads it: a line is a secret as it stands, blanks included.
            secrets = [line for line in path.read_text().splitlines() if line]
        except OSError as e:
            raise ValueError(f"[aliases] srs_secret_file: cannot read {path}: {e.strerror}") from None
        if not secrets:
            raise ValueError(f"[aliases] srs_secret_file: {path} holds no secret")
    if not secrets:
        if settings["srs_domain"]:
            raise ValueError("[aliases] srs_domain is set but no srs_secret: SRS needs both")
        return None
    if not settings["srs_domain"]:
        raise ValueError("[aliases] srs_domain: required with an SRS secret")
    return SRS(secrets, settings["srs_domain"], max_age=settings["srs_max_age"],
               hash_length=settings["srs_hash_length"], clock=pc.now)


def _load() -> tuple[AliasTable, SRS | None]:
    settings = _settings()
    srs = _srs(settings)
    domains = list(settings["local_domains"]) + ([srs.domain] if srs else [])
    table = AliasTable.read(pc.path(settings["file"]), local_domains=domains,
                            recipient_delimiter=settings["recipient_delimiter"],
                            propagate_extension=settings["propagate_extension"],
                            max_depth=settings["max_depth"], max_targets=settings["max_targets"])
    if table.loops:
        # Bounded where met (451 4.3.0 for a recipient whose expansion meets one: the mail waits
        # while the file is fixed), as Postfix bounds its own; the rest of the table serves.
        shown = "; ".join(" -> ".join(f"{k} (line {table.lines[k]})" for k in loop[:-1]) + f" -> {loop[-1]}"
                          for loop in table.loops[:5])
        pc.log.warning("aliases: %s: alias loop%s: %s; mail to %s is deferred (451 4.3.0) until it is fixed",
                       table.path, "s" if len(table.loops) > 1 else "", shown,
                       "the addresses on it" if len(table.loops) == 1 else "the addresses on them")
    for key, line in table.duplicates[:10]:
        pc.log.warning("aliases: %s, line %d: %s is listed again; the first entry counts", table.path, line, key)
    pc.log.info("aliases: %d entries from %s", len(table), table.path)
    return table, srs


TABLE, FORWARDER = _load()
_LOCAL_SENDER_DOMAINS = TABLE.domains  # senders of these domains need no SRS: our SPF covers them (canonical forms)
_SRS_DOMAIN = canonical_domain(FORWARDER.domain) if FORWARDER is not None else None


def _rewrite_sender(tx, sender, rcpt: str) -> None:
    """The SRS form as the envelope sender; the sender as it is when it has none (too long)."""
    try:
        tx.sender = FORWARDER.forward(sender)
    except ValueError as e:  # SRSError, or (never expected) the address check of tx.sender
        if not tx.data.get("aliases_srs_skipped"):  # once a transaction: every forwarded RCPT gets here
            tx.data["aliases_srs_skipped"] = True
            pc.log.warning("aliases: forwarding to <%s> with the sender <%s> as it is, not SRS: %s",
                           rcpt, sender, e)


def _forwarded(tx, rcpt: str, targets: list[str]) -> None:
    """``rcpt`` goes to ``targets``: the sender gets its SRS form when one of them is outside
    the local domains and the sender's own domain is not local (our SPF does not cover it)."""
    sender = tx.sender
    if (FORWARDER is not None and sender and canonical_domain(sender.domain) not in _LOCAL_SENDER_DOMAINS
            and any(canonical_domain(t.rpartition("@")[2]) not in _LOCAL_SENDER_DOMAINS for t in targets)):
        _rewrite_sender(tx, sender, rcpt)


def on_rcpt(tx, rcpt):
    domain = canonical_domain(rcpt.domain)
    if not TABLE.is_local(domain):
        return None
    address = str(rcpt)
    if FORWARDER is not None and domain == _SRS_DOMAIN and is_srs(address):  # (a quoted local part may hold "@")
        try:
            original = FORWARDER.reverse(address)
        except SRSError as e:
            pc.log.info("aliases: RCPT <%s> refused: %s", address, e)
            return pc.reject(f"<{address}>: Recipient address rejected: invalid or expired SRS address",
                             code=550, status="5.1.1")
        # A reply (not a bounce) goes on to the original sender's domain: as any mail we
        # forward there, with a sender of ours (as Postfix with postsrsd rewrites every one).
        _forwarded(tx, address, [original])
        return pc.redirect(original)
    try:
        targets = TABLE.expand(address)
    except AliasError as e:
        pc.log.error("aliases: RCPT <%s> deferred: %s (in %s)", address, e, TABLE.path)
        return pc.tempfail(f"<{address}>: alias expansion failed; try again later", code=451, status="4.3.0")
    if targets is None:
        return pc.reject(f"<{address}>: Recipient address rejected: User unknown", code=550, status="5.1.1")
    if len(targets) == 1 and mailbox_key(targets[0]) == mailbox_key(address):
        # Its own mailbox: the next policy and the upstream decide. Spelt otherwise ("alice"@ for alice@):
        # as the table spells it, so that it is one recipient with the same mailbox reached another way.
        return None if targets[0] == address else pc.rewrite(targets[0])
    _forwarded(tx, address, targets)
    # One target: a rewrite, so the policies after this one decide on it; several: the expansion is final.
    return pc.rewrite(targets[0]) if len(targets) == 1 else pc.redirect(*targets)
