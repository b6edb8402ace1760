"""Postfix ``header_checks`` (regexp tables, header_checks(5)) at the end of DATA.

Configure it in ``[header_checks]``:

    [header_checks]
    file = "header_checks"           # required, relative to the config file

The file holds one rule a line, tried top to bottom against each header
field of the message (``Name: value``, unfolded); the first rule that
matches a field decides for that field:

    # comments and blank lines are skipped; a line starting with blanks continues the one before
    /^Subject:.*viagra/              REJECT 5.7.1 No pharmacy spam here
    /^X-Mailer: BulkMailer/          DISCARD
    /^Received: .*\\[10\\./           IGNORE
    /^X-Spam-Flag:/                  IGNORE
    /^Subject: (.*)\\[SPAM\\]/         REPLACE Subject: $1
    /^From:.*@partner\\.example/      PREPEND X-Partner: yes
    !/^Date:/                        DUNNO
    /^Content-Type:.*\\.exe/          WARN executable attachment named in a header

A pattern is ``/regex/flags`` (Python's ``re``, close to Postfix's PCRE
tables) or ``!/regex/`` (matches when the regex does not). As in Postfix,
matching is case-insensitive unless the flags hold ``i`` (which toggles it);
``m`` and ``x`` are re.MULTILINE and re.VERBOSE. ``$1``..``$9`` and
``${1}`` in an action's text stand for the regex's groups.

Actions (Postfix's names):

- ``REJECT [text]``: ``550 5.7.1 text`` (``Message content rejected``); a
  text starting with an enhanced status code (``5.7.1 ...``) gives that code;
- ``DEFER [text]``: ``451 4.7.1 text``;
- ``DISCARD [text]``: accept the message and deliver nothing (logged);
- ``WARN [text]``: log it, go on;
- ``IGNORE``: remove the field;
- ``REPLACE Name: value``: replace the field where it stands;
- ``PREPEND Name: value``: insert a field above it;
- ``DUNNO`` / ``OK``: this field is fine; go on with the next field.

REJECT, DEFER and DISCARD end the checks. Only the message's own header
section is checked (not the headers of MIME parts; see attachments.py).
A file with a bad regex or an unknown action stops the daemon at start-up
and a reload keeps the old rules, saying which line is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import portcullis as pc
from portcullis.maps import MapError
from portcullis.settings import Settings

ACTIONS = ("REJECT", "DEFER", "DISCARD", "WARN", "IGNORE", "REPLACE", "PREPEND", "DUNNO", "OK")
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\s+")
_GROUP = re.compile(r"\$(?:(\d)|\{(\d+)\})")
_FIELD = re.compile(r"([!-9;-~]+):\s?(.*)\Z", re.S)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern
    negated: bool
    action: str
    text: str
    line: int


def _parse_pattern(path: str, line: int, spec: str) -> tuple[re.Pattern, bool, str]:
    """(regex, negated, the rest of the line) of a rule ``[!]/regex/flags rest``."""
    negated = spec.startswith("!")
    if negated:
        spec = spec[1:]
    if not spec.startswith("/"):
        raise MapError(path, line, "a rule starts with /regex/ or !/regex/")
    i = 1
    while i < len(spec) and spec[i] != "/":
        i += 2 if spec[i] == "\\" else 1  # an escaped character, \/ included, is part of the regex
    if i >= len(spec):
        raise MapError(path, line, "the /regex/ is not closed")
    regex = spec[1:i].replace("\\/", "/")
    flags = re.match(r"\S*", spec[i + 1:]).group()
    options = re.IGNORECASE
    for f in flags:
        if f == "i":
            options ^= re.IGNORECASE
        elif f == "m":
            options |= re.MULTILINE
        elif f == "x":
            options |= re.VERBOSE
        else:
            raise MapError(path, line, f"unknown flag {f!r} (want i, m or x)")
    try:
        pattern = re.compile(regex, options)
    except re.error as e:
        raise MapError(path, line, f"bad regex: {e}") from None
    return pattern, negated, spec[i + 1 + len(flags):].strip()


def read_rules(path: str) -> list[Rule]:
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise MapError(path, None, f"cannot read it: {e.strerror}") from None
    except UnicodeDecodeError:
        raise MapError(path, None, "not UTF-8") from None
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not logical:
                raise MapError(path, number, "a continuation line with no rule before it")
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + stripped)
        else:
            logical.append((number, stripped))
    rules = []
    for number, line in logical:
        pattern, negated, rest = _parse_pattern(path, number, line)
        action, _, argument = rest.partition(" ")
        action = action.upper()
        if action not in ACTIONS:
            raise MapError(path, number, f"unknown action {action or '(none)'!r} (want one of {', '.join(ACTIONS)})")
        argument = argument.strip()
        if action in ("REPLACE", "PREPEND") and not _FIELD.match(argument):
            raise MapError(path, number, f"{action} needs a header field, Name: value")
        if negated and _GROUP.search(argument):
            raise MapError(path, number, "a !/regex/ has no groups for $1")
        rules.append(Rule(pattern, negated, action, argument, number))
    return rules


def _settings() -> list[Rule]:
    table = Settings("header_checks", {"file": None})
    if not isinstance(table["file"], str) or not table["file"]:
        raise ValueError("[header_checks] file: required")
    return read_rules(str(pc.path(table["file"])))


RULES = _settings()


def _match(field: str) -> tuple[Rule, re.Match | None] | None:
    for rule in RULES:
        found = rule.pattern.search(field)
        if rule.negated:
            if found is None:
                return rule, None
        elif found is not None:
            return rule, found
    return None


def _expand(text: str, found: re.Match | None) -> str:
    if found is None:
        return text
    return _GROUP.sub(lambda m: found.group(int(m.group(1) or m.group(2))) or "", text)


def _reply(action: str, text: str):
    status = _STATUS.match(text)
    if action == "REJECT":
        code, default_status, default_text = 550, "5.7.1", "Message content rejected"
    else:
        code, default_status, default_text = 451, "4.7.1", "Message content deferred"
    if status and status.group(1) == str(code)[0]:
        return code, ".".join(status.groups()), text[status.end():] or default_text
    return code, default_status, text or default_text


def on_data(tx, message):
    edits = []  # (index, action, field text): applied bottom up, so indices stay right
    for index, (name, value) in enumerate(message.headers):
        field = f"{name}: {value}"
        matched = _match(field)
        if matched is None:
            continue
        rule, found = matched
        text = _expand(rule.text, found)
        where = f"{name} (header_checks line {rule.line})"
        if rule.action in ("REJECT", "DEFER"):
            code, status, reply = _reply(rule.action, text)
            pc.log.info("header_checks: %s %s: %s", rule.action.lower(), where, reply)
            return (pc.reject if code >= 500 else pc.tempfail)(reply, code=code, status=status)
        if rule.action == "DISCARD":
            pc.log.info("header_checks: discard %s%s", where, f": {text}" if text else "")
            return pc.discard()
        if rule.action == "WARN":
            pc.log.warning("header_checks: warning %s%s", where, f": {text}" if text else "")
        elif rule.action in ("IGNORE", "REPLACE", "PREPEND"):
            edits.append((index, rule.action, text))
    for index, action, text in reversed(edits):
        if action == "IGNORE":
            message.remove_header_at(index)
            continue
        name, value = _FIELD.match(text).groups()
        if action == "REPLACE":
            message.replace_header_at(index, name, value)
        else:
            message.insert_header(index, name, value)
    return None
