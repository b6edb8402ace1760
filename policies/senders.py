"""Who may send as whom (Postfix ``smtpd_sender_login_maps`` with
``reject_sender_login_mismatch``), checked at MAIL FROM.

Configure it in ``[senders]`` (the defaults shown):

    [senders]
    file = ""                        # lines "address  login[, login...]"; "@domain" allowed
    login_is_address = false         # true: a login that is an address (alice@example.test) owns it, listed or not
    owns_aliases = false             # a login also owns the aliases ([aliases] file) that expand to
                                     #   an address it owns (team@ -> alice@: alice may send as team@),
                                     #   unless the file lists owners for that sender: then those alone
    local_domains = []               # default: every domain aliases.py takes as local ([aliases] local_domains,
                                     #   the domains named in [aliases] file, srs_domain); [] without [aliases]
    trusted_networks = []            # default: [relay] trusted_networks
    recipient_delimiter = "+"        # default: [aliases] recipient_delimiter, else "+"

The rules, for a MAIL FROM other than ``<>``:

- An authenticated client may use a sender only if its login owns it (the
  file lists the login for the address, its extension-less form or its
  ``@domain``; or, with ``login_is_address``, the login is the address
  itself; or, with
  ``owns_aliases``, the sender is an alias the file has no line for that
  expands to an address the login owns): otherwise ``553 5.7.1 <sender>: Sender address rejected:
  not owned by user LOGIN``.
- A client that did not authenticate and is not in ``trusted_networks``
  may not use a sender of a local domain, nor one the file lists an owner
  for: ``553 5.7.1 <sender>: Sender address rejected: not logged in``.

Mail from ``<>`` and from trusted networks without AUTH passes. The files
are read at load: on start-up and on every SIGHUP.
"""

from __future__ import annotations

import portcullis as pc
from portcullis._address import canonical_domain
from portcullis.aliases import AliasError, AliasTable
from portcullis.senders import SenderLogins
from portcullis.settings import Settings, in_networks, network

_KEYS = ("file", "login_is_address", "owns_aliases", "local_domains", "trusted_networks", "recipient_delimiter")


def _settings() -> dict:
    table = Settings("senders", dict.fromkeys(_KEYS)).given  # a typo must not silently turn a rule off
    aliases = pc.config.get("aliases", {})
    settings = {
        "file": table.get("file", ""),
        "login_is_address": table.get("login_is_address", False),
        "owns_aliases": table.get("owns_aliases", False),
        "local_domains": table.get("local_domains"),  # None: the alias table's domains (_load)
        "trusted_networks": table.get("trusted_networks", pc.config.get("relay", {}).get("trusted_networks", [])),
        "recipient_delimiter": table.get("recipient_delimiter", aliases.get("recipient_delimiter", "+")),
    }
    for key in ("login_is_address", "owns_aliases"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"[senders] {key}: want true or false")
    for key in ("local_domains", "trusted_networks"):
        if key == "local_domains" and settings[key] is None:
            continue
        if not isinstance(settings[key], list) or not all(isinstance(v, str) and v for v in settings[key]):
            raise ValueError(f"[senders] {key}: want a list of strings")
    if not isinstance(settings["file"], str) or not isinstance(settings["recipient_delimiter"], str):
        raise ValueError("[senders] file and recipient_delimiter: want strings")
    if settings["owns_aliases"] and not aliases.get("file"):
        raise ValueError("[senders] owns_aliases: needs [aliases] file")
    if not settings["file"] and not settings["login_is_address"] and not settings["owns_aliases"]:
        raise ValueError("[senders]: with no file and login_is_address = false, no login owns anything")
    return settings


def _networks(values: list[str]) -> list:
    try:
        return [network(v) for v in values]
    except ValueError as e:
        raise ValueError(f"[senders] trusted_networks: {e}") from None


def _load():
    s = _settings()
    logins = (SenderLogins.read(pc.path(s["file"]), recipient_delimiter=s["recipient_delimiter"],
                                login_is_address=s["login_is_address"])
              if s["file"] else SenderLogins(recipient_delimiter=s["recipient_delimiter"],
                                             login_is_address=s["login_is_address"]))
    config = pc.config.get("aliases", {})
    aliases = None
    if config.get("file") and (s["owns_aliases"] or s["local_domains"] is None):
        # The domains aliases.py takes as local, as it works them out: a domain named only in the
        # file (a key, a catch-all, "domain -") or the SRS domain is as much ours as a listed one,
        # and a client that did not log in must not use it either.
        listed = list(config.get("local_domains", [])) + ([config["srs_domain"]] if config.get("srs_domain") else [])
        aliases = AliasTable.read(pc.path(config["file"]), local_domains=listed,
                                  recipient_delimiter=s["recipient_delimiter"],
                                  propagate_extension=config.get("propagate_extension", True))
    if s["local_domains"] is not None:
        local = s["local_domains"]
    else:
        local = aliases.domains if aliases is not None else config.get("local_domains", [])
    # One form of each domain (A-labels): bücher.example listed covers xn--bcher-kva.example used, and back.
    return (logins, aliases if s["owns_aliases"] else None, {canonical_domain(d) for d in local},
            _networks(s["trusted_networks"]))


LOGINS, ALIASES, LOCAL_DOMAINS, TRUSTED = _load()


def _owns(login: str, sender: str) -> bool:
    if LOGINS.owns(login, sender):
        return True
    # First match, as Postfix's smtpd_sender_login_maps: a sender the table lists (as it is, without
    # its extension, or by its @domain) has the owners listed there and no others. The aliases speak
    # only for senders the table does not list, or whoever gets a copy of ceo@ could send as ceo@.
    if ALIASES is None or LOGINS.owners(sender):
        return False
    try:
        # Exact entries only: a catch-all would hand its whole domain to whoever it points at.
        targets = ALIASES.expand(sender, use_catchall=False)
    except AliasError as e:
        pc.log.warning("senders: cannot expand <%s> to check its owner: %s", sender, e)
        return False
    return bool(targets) and LOGINS.owns_any(login, targets)


def on_mail(tx, sender):
    if not sender:
        return None  # <>: bounces and notifications
    address = str(sender)
    login = tx.conn.auth_user
    if login is not None:
        if _owns(login, address):
            return None
        shown = "".join(c if " " < c < "\x7f" else "?" for c in login)[:100]  # a login may hold anything (RFC 4616)
        return pc.reject(f"<{address}>: Sender address rejected: not owned by user {shown}", code=553, status="5.7.1")
    if in_networks(tx.conn.client_ip, TRUSTED):
        return None
    if canonical_domain(sender.domain) in LOCAL_DOMAINS or LOGINS.owners(address):
        return pc.reject(f"<{address}>: Sender address rejected: not logged in", code=553, status="5.7.1")
    return None
