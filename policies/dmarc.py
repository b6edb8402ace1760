"""DMARC enforcement (RFC 7489): what a domain's published policy asks for.

The daemon evaluates DMARC (``[checks] dmarc = true``, with ``spf`` and
``dkim``) and hands the result to ``on_data`` as ``tx.dmarc``; whether
failing mail is refused is the operator's choice, made here. Configure it
in ``[dmarc]`` (every key optional; the defaults shown):

    [dmarc]
    reject = "reject"              # p=reject: "reject" (550 5.7.1), "quarantine" or "none"
    quarantine = "quarantine"      # p=quarantine: "quarantine" (mark it), "reject" or "none"
    quarantine_header = "X-Portcullis-Quarantine"
    honour_pct = true              # pct= sampling; false applies p= to every failing message
    temperror = "accept"           # DNS trouble fetching the policy: "accept" or "tempfail" (451 4.7.5)
    skip_authenticated = true      # mail from AUTH clients is ours, not a forgery
    skip_domains = []              # From domains never enforced
    trusted_forwarders = []        # ARC sealers (d=) whose valid chain excuses a DMARC failure
    unusable_from = "reject"       # a From with no domain to check: "reject" (550 5.7.1), "quarantine" or "none"

Domains are compared in one form, lowercased and in A-labels: an entry
``bücher.example`` matches a From domain or sealer ``xn--bcher-kva.example``
and the other way round.

A From naming several domains (several mailboxes, or several From fields)
has each evaluated, and the strictest failure is enforced (RFC 7489
§6.6.1); such a message is skipped only when ``skip_domains`` lists every
one of them. A From that gives no domain to evaluate (``tx.dmarc.
unusable_from``: no From field, one that does not parse, an address literal,
more than 8 domains, a header section over 1 MiB) falls outside DMARC, and
so would a forgery that makes its From so: ``unusable_from`` decides, as
OpenDMARC's ``RequiredHeaders`` does (reject by default; RFC 5322 §3.6 asks
for exactly one From field with a mailbox). A ``permerror`` for a broken
DMARC record is the domain owner's mistake and is not enforced.

A ``temperror`` whose policy is known (``tx.dmarc.policy`` set: the record
was fetched, but an aligned SPF or DKIM check failed on DNS and nothing
aligned passed) is deferred, ``451 4.7.5``, whenever this policy would act
on a failure of that domain: tried again, it may pass, and letting it
through would let a forger in who can make such a lookup time out (an SPF
``ptr`` term asks the client's own DNS). ``temperror`` above is for a
policy that could not be fetched.

A mailing list that changes the message breaks its author's DKIM signature
and so its DMARC. When the list seals what it received with ARC (RFC 8617)
and its domain is in ``trusted_forwarders``, a failing message is not
enforced when (``[checks] arc = true``) its chain passes, the newest set
(the hop that handed the message over) is the list's, and that set's
ARC-Authentication-Results show the message authenticated for its From
domain when the list got it (``tx.dmarc.arc_aligned``: an aligned SPF or
DKIM pass, or a DMARC pass). An older set of the list's vouches for
nothing: a seal covers only the ARC fields, so anyone can copy one from
mail the list once sent them onto a forgery and seal that (RFC 8617 §5.2
checks only the newest message signature). Nor does the list's seal over
mail that failed when it got it: the list relayed a forgery.

"Quarantine" marks the message with one header (``quarantine_header:
DMARC policy of example.com (p=quarantine)``) that the upstream files on
(a Sieve rule, Postfix ``header_checks`` with ``HOLD``, ...). A header of that
name the message came with is removed first, so a sender cannot forge or
mask the mark.
"""

from __future__ import annotations

import portcullis as pc
from portcullis._address import canonical_domain

ACTIONS = ("reject", "quarantine", "none")


def _settings() -> dict:
    table = dict(pc.config.get("dmarc", {}))
    settings = {
        "reject": table.pop("reject", "reject"),
        "quarantine": table.pop("quarantine", "quarantine"),
        "quarantine_header": table.pop("quarantine_header", "X-Portcullis-Quarantine"),
        "honour_pct": table.pop("honour_pct", True),
        "temperror": table.pop("temperror", "accept"),
        "skip_authenticated": table.pop("skip_authenticated", True),
        "skip_domains": table.pop("skip_domains", []),
        "trusted_forwarders": table.pop("trusted_forwarders", []),
        "unusable_from": table.pop("unusable_from", "reject"),
    }
    # A typo must not silently turn enforcement off: refuse what we do not know.
    if table:
        raise ValueError(f"[dmarc]: unknown key(s) {', '.join(sorted(table))}")
    for key in ("reject", "quarantine", "unusable_from"):
        if settings[key] not in ACTIONS:
            raise ValueError(f"[dmarc] {key} = {settings[key]!r}: want one of {', '.join(ACTIONS)}")
    if settings["temperror"] not in ("accept", "tempfail"):
        raise ValueError(f"[dmarc] temperror = {settings['temperror']!r}: want accept or tempfail")
    for key in ("honour_pct", "skip_authenticated"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"[dmarc] {key}: want true or false")
    name = settings["quarantine_header"]
    if not isinstance(name, str) or not name or any(c <= " " or c == ":" or c > "~" for c in name):
        raise ValueError(f"[dmarc] quarantine_header = {name!r}: not a header field name")
    for key in ("skip_domains", "trusted_forwarders"):
        domains = settings[key]
        if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
            raise ValueError(f"[dmarc] {key}: want a list of domains")
        # Canonical (A-labels, lowercased): a U-label entry matches the A-label name and back.
        settings[key] = frozenset(canonical_domain(d) for d in domains)
    return settings


SETTINGS = _settings()


def _act(action: str, message, reject_text: str, mark: str, log_text: str):
    """Applies an action ("reject", "quarantine" or "none") to the message."""
    if action == "reject":
        pc.log.info("DMARC: rejected, %s", log_text)
        return pc.reject(reject_text)
    if action == "quarantine":
        pc.log.info("DMARC: quarantined, %s", log_text)
        message.add_header(SETTINGS["quarantine_header"], mark)
    return None


def on_data(tx, message):
    header = SETTINGS["quarantine_header"]
    message.remove_header(header)  # only our mark counts
    result = tx.dmarc
    if result is None:
        return None  # the daemon does not evaluate DMARC: nothing to enforce
    if SETTINGS["skip_authenticated"] and tx.conn.auth_user is not None:
        return None
    if result.unusable_from:
        return _act(SETTINGS["unusable_from"], message,
                    "Message rejected: its From field gives no domain to check DMARC for",
                    "DMARC: no usable From domain", "no usable From domain")
    authors = result.from_domains or (result.domain,)
    if all(canonical_domain(d) in SETTINGS["skip_domains"] for d in authors):
        return None
    if result.result == "temperror":
        if result.policy in ("reject", "quarantine") and SETTINGS[result.policy] != "none":
            pc.log.info("DMARC: deferred, From domain %s (p=%s): an aligned check failed on DNS",
                        result.domain, result.policy)
            return pc.tempfail(f"DMARC: the authentication of {result.domain} could not be checked, try again later",
                               status="4.7.5")
        if SETTINGS["temperror"] == "tempfail" and result.policy is None:  # (a policy known: it said above)
            return pc.tempfail(f"DMARC policy of {result.domain} could not be fetched, try again later",
                               status="4.7.5")
        return None
    if result.result != "fail":
        return None
    arc = tx.arc
    if arc is not None and arc.result == "pass" and arc.sealers:
        # Only the newest set's sealer handed us this message (the highest i=; an older seal can be
        # copied onto anything), and only what it found authenticated when it got it is vouched for.
        newest = canonical_domain(arc.sealers[-1])
        if newest in SETTINGS["trusted_forwarders"]:
            if result.arc_aligned:
                pc.log.info("DMARC: fail for %s excused: ARC chain sealed last by %s, which found it authenticated",
                            result.domain, newest)
                return None
            pc.log.info("DMARC: fail for %s not excused: %s sealed it, but its results show no pass for it",
                        result.domain, newest)
    asked = result.disposition if SETTINGS["honour_pct"] else result.policy
    action = SETTINGS.get(asked, "none") if asked in ("reject", "quarantine") else "none"
    return _act(action, message, f"Message rejected: DMARC policy of {result.domain} (p={result.policy})",
                f"DMARC policy of {result.domain} (p={result.policy})",
                f"From domain {result.domain} (p={result.policy})")
