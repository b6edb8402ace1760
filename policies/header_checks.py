"""Postfix ``header_checks`` (pcre_table(5) and regexp_table(5) files) at the end of DATA.

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
    |^Content-Type:.*/x-msdownload|  WARN executable attachment named in a header
    if /^Received:/
    /from internal\\./                IGNORE
    endif

A pattern is ``/regex/flags`` or ``!/regex/flags`` (matches when the regex
does not); the delimiter may be any character but a blank, a letter, a
digit or a backslash (``\\`` escapes it inside); ``!`` and the regex may be
apart. The regex is Python's ``re``, read as Postfix's PCRE tables read
theirs: POSIX classes such as ``[[:alpha:]]`` are translated. ``if
/regex/flags`` (or ``if !/regex/flags``) .. ``endif`` applies the rules
between them only to fields the regex matches (does not match); they nest.

The flags are pcre_table(5)'s, each toggling: ``i`` case (insensitive by
default), ``m`` multi-line, ``s`` dot-all (on by default), ``x`` extended
(verbose; not regexp_table(5)'s switch to basic regexes), ``A`` anchored at
the start of the field, ``U`` ungreedy (not with ``x``); ``E`` (``$`` only
at the very end) and ``X`` (PCRE_EXTRA) have no effect here: a field holds
no line feed, and ``re`` refuses an unknown escape anyway.

``$1``..``$99``, ``${1}`` and ``$(1)`` in an action's text stand for the
regex's groups (one it does not have is refused at load, as Postfix does);
``$$`` is a ``$``.

Actions (Postfix's names; blanks or tabs between the fields):

- ``REJECT [text]``: ``550 5.7.1 text`` (``Message content rejected``); a
  text starting with an enhanced status code (``5.7.1 ...``) gives that
  code; one starting with ``4.x.x`` makes it a temporary failure, ``451
  4.x.x text``, as in Postfix (``2.x.x``, which Postfix refuses, is made
  ``4.x.x``, with a warning at load);
- ``DEFER [text]``: ``451 4.7.1 text`` (``Message content deferred``); a
  status the text starts with gives that code, made class 4 if it is not
  (``DEFER 5.7.1 x`` is ``451 4.7.1 x``, with a warning at load), as in
  Postfix: a DEFER is always temporary;
- ``DISCARD [text]``: accept the message and deliver nothing (logged);
- ``WARN [text]``: log it, go on;
- ``IGNORE``: remove the field;
- ``REPLACE Name: value``: replace the field where it stands;
- ``PREPEND Name: value``: insert a field above it;
- ``DUNNO`` / ``OK``: this field is fine; go on with the next field.

REJECT, DEFER and DISCARD end the checks. Only the message's own header
section is checked (not the headers of MIME parts; see attachments.py).
A file with a bad regex, flag, action or ``$n``, or an ``if`` without its
``endif``, stops the daemon at start-up and a reload keeps the old rules,
saying which line is wrong (where Postfix would skip such a line with a
warning).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace

import portcullis as pc
from portcullis.maps import MapError
from portcullis.settings import Settings

ACTIONS = ("REJECT", "DEFER", "DISCARD", "WARN", "IGNORE", "REPLACE", "PREPEND", "DUNNO", "OK")
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")  # (a status alone, with no text, too)
_MACRO = re.compile(r"\$(?:\{([^}]*)\}|\(([^)]*)\)|(\w+))", re.ASCII)  # Postfix's mac_parse: $name, ${name}, $(name)
_FIELD = re.compile(r"([!-9;-~]+):\s?(.*)\Z", re.S)
_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}
_COUNT = re.compile(r"\{\d+(?:,\d*)?\}")
#: POSIX classes, as the inside of a [...] set (ASCII, as PCRE without UTF mode has them).
_POSIX = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": " \\t", "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9",
          "graph": "!-~", "lower": "a-z", "print": " -~", "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v",
          "upper": "A-Z", "word": "\\w", "xdigit": "0-9A-Fa-f"}


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern | None  # None for an endif
    negated: bool
    action: str  # an action, or "if" / "endif"
    text: tuple  # the action's text: literal strings and group numbers
    line: int
    anchored: bool = False
    end: int = 0  # an if: the index of its endif


def _isalnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _copy_set(regex: str, i: int, out: list[str]) -> int:
    """Copies the [...] set at ``regex[i]`` to ``out``, POSIX classes translated; the index after it."""
    j = i + 1
    out.append("[")
    if regex.startswith("^", j):
        out.append("^")
        j += 1
    if regex.startswith("]", j):  # a first "]" is itself
        out.append("\\]")
        j += 1
    while j < len(regex) and regex[j] != "]":
        if regex[j] == "\\":
            out.append(regex[j:j + 2])
            j += 2
        elif regex.startswith(("[:", "[.", "[="), j) and (close := regex.find(regex[j + 1] + "]", j + 2)) > 0:
            name = regex[j + 2:close]
            if regex[j + 1] != ":" or name not in _POSIX:
                raise ValueError(f"{regex[j:close + 2]} is not supported here (want a POSIX class such as [:alpha:])")
            out.append(_POSIX[name])
            j = close + 2
        else:
            out.append("\\[" if regex[j] == "[" else regex[j])  # "[" is itself in a set, as in PCRE
            j += 1
    if j < len(regex):
        out.append("]")
        j += 1
    return j


def _translate(regex: str, ungreedy: bool) -> str:
    """``regex`` for Python's re: POSIX classes translated; with ``ungreedy`` (the U flag), each
    quantifier's greediness swapped, as PCRE_UNGREEDY does."""
    out: list[str] = []
    i = 0
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            out.append(regex[i:i + 2])
            i += 2
        elif c == "[":
            i = _copy_set(regex, i, out)
        elif regex.startswith("(?", i):  # that "?" is no quantifier
            out.append("(?")
            i += 2
        elif ungreedy and (c in "*+?" or (c == "{" and _COUNT.match(regex, i))):
            end = _COUNT.match(regex, i).end() if c == "{" else i + 1
            out.append(regex[i:end])
            i = end
            if regex.startswith("?", i):  # lazy under U: greedy
                i += 1
            elif regex.startswith("+", i):  # possessive: as it is
                out.append("+")
                i += 1
            else:
                out.append("?")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_pattern(path: str, line: int, spec: str) -> tuple[re.Pattern, bool, bool, str]:
    """(regex, negated, anchored, the rest of the line) of ``[!]/regex/flags rest``; any delimiter."""
    negated, i = False, 0
    while i < len(spec) and (spec[i] == "!" or spec[i].isspace()):  # "!", "! /x/" and "!!" as in Postfix
        negated ^= spec[i] == "!"
        i += 1
    if i >= len(spec):
        raise MapError(path, line, "no /regex/ after the !")
    delimiter = spec[i]
    if _isalnum(delimiter) or delimiter == "\\":
        raise MapError(path, line, f"{delimiter!r} cannot delimit a regex (a rule starts with /regex/ or !/regex/)")
    start = end = i + 1
    while end < len(spec) and spec[end] != delimiter:
        end += 2 if spec[end] == "\\" else 1  # an escaped character, the delimiter included, is part of the regex
    if end >= len(spec):
        raise MapError(path, line, f"the regex is not closed (no second {delimiter!r})")
    regex = spec[start:end]  # "\/" stays: re reads it as "/", as PCRE does
    flags = re.match(r"\S*", spec[end + 1:]).group()
    options, anchored, ungreedy = re.IGNORECASE | re.DOTALL, False, False  # Postfix's PCRE defaults
    for f in flags:
        if f in _FLAGS:
            options ^= _FLAGS[f]
        elif f == "A":
            anchored = not anchored
        elif f == "U":
            ungreedy = not ungreedy
        elif f not in "EX":  # no effect here: see the docstring
            raise MapError(path, line, f"unknown flag {f!r} (want i, m, s, x, A, E, U or X)")
    if ungreedy and options & re.VERBOSE:
        raise MapError(path, line, "the U flag cannot be combined with x here")
    try:
        regex = _translate(regex, ungreedy)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "possible nested set" and the like: read as PCRE does
            pattern = re.compile(regex, options)
    except (re.error, ValueError) as e:
        raise MapError(path, line, f"bad regex: {e}") from None
    return pattern, negated, anchored, spec[end + 1 + len(flags):].strip()


def _template(path: str, line: int, text: str, pattern: re.Pattern, negated: bool) -> tuple:
    """``text`` as literal strings and group numbers; a $n the regex has no group for is refused."""
    pieces: list = []
    literal = ""
    i = 0
    while i < len(text):
        if text[i] != "$":
            literal += text[i]
            i += 1
        elif text.startswith("$$", i):
            literal += "$"
            i += 2
        elif (macro := _MACRO.match(text, i)) is None:
            if text.startswith(("${", "$("), i):
                raise MapError(path, line, f"an unclosed {text[i:i + 2]} in the text (write $$ for a $)")
            literal += "$"
            i += 1
        else:
            name = next(g for g in macro.groups() if g is not None)
            if not (name.isascii() and name.isdigit()):
                raise MapError(path, line, f"{macro.group()} is not a group number (write $$ for a $)")
            if negated:
                raise MapError(path, line, f"a !/regex/ has no groups for {macro.group()}")
            number = int(name)
            if not 1 <= number <= pattern.groups:
                raise MapError(path, line, f"{macro.group()} is out of range: the regex has {pattern.groups} group(s)")
            pieces += [literal, number]
            literal = ""
            i = macro.end()
    return tuple(pieces + [literal])


def _keyword(text: str, word: str) -> str | None:
    """The rest of ``text`` after a leading ``word`` (any case, not followed by a letter or digit), or None."""
    if text[:len(word)].lower() == word and not (len(text) > len(word) and _isalnum(text[len(word)])):
        return text[len(word):].strip()
    return None


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
        if line[0].isspace():
            if not logical:
                raise MapError(path, number, "a continuation line with no rule before it")
            logical[-1] = (logical[-1][0], logical[-1][1] + " " + stripped)
        else:
            logical.append((number, stripped))
    rules: list[Rule] = []
    open_ifs: list[int] = []  # indices in rules of the if lines not yet closed
    for number, line in logical:
        if _isalnum(line[0]):
            if (rest := _keyword(line, "if")) is not None:
                pattern, negated, anchored, extra = _parse_pattern(path, number, rest)
                if extra:
                    raise MapError(path, number, f"text after the if's regex: {extra!r} (a rule inside if..endif "
                                                 "must not start with blanks, or it continues the line before)")
                open_ifs.append(len(rules))
                rules.append(Rule(pattern, negated, "if", (), number, anchored))
            elif (rest := _keyword(line, "endif")) is not None:
                if rest:
                    raise MapError(path, number, f"text after endif: {rest!r}")
                if not open_ifs:
                    raise MapError(path, number, "an endif without its if")
                start = open_ifs.pop()
                rules[start] = replace(rules[start], end=len(rules))
                rules.append(Rule(None, False, "endif", (), number))
            else:
                raise MapError(path, number, "a rule starts with /regex/ or !/regex/ (any delimiter), if or endif")
            continue
        pattern, negated, anchored, rest = _parse_pattern(path, number, line)
        action, argument = (rest.split(None, 1) + [""])[:2] if rest else ("", "")
        action = action.upper()
        if action not in ACTIONS:
            raise MapError(path, number, f"unknown action {action or '(none)'!r} (want one of {', '.join(ACTIONS)})")
        argument = argument.strip()
        if action in ("REPLACE", "PREPEND") and not _FIELD.match(argument):
            raise MapError(path, number, f"{action} needs a header field, Name: value")
        rules.append(Rule(pattern, negated, action, _template(path, number, argument, pattern, negated), number,
                          anchored))
    if open_ifs:
        raise MapError(path, rules[open_ifs[-1]].line, "an if without its endif")
    return rules


def _warn_about_statuses(rules: list[Rule]) -> None:
    """A warning at load for a status Postfix would change (it warns when the rule fires)."""
    for rule in rules:
        literal = rule.text[0] if rule.text and isinstance(rule.text[0], str) else ""
        found = _STATUS.match(literal) if rule.action in ("REJECT", "DEFER") else None
        if found is None or found.group(1) == "4" or (rule.action == "REJECT" and found.group(1) == "5"):
            continue
        status = ".".join(found.groups())
        pc.log.warning("header_checks: line %d: %s %s: the reply will be 451 4%s (%s), as Postfix makes it",
                       rule.line, rule.action, status, status[1:],
                       "DEFER is always temporary" if rule.action == "DEFER" else "want 4.x.x or 5.x.x")


def _settings() -> list[Rule]:
    table = Settings("header_checks", {"file": None})
    if not isinstance(table["file"], str) or not table["file"]:
        raise ValueError("[header_checks] file: required")
    rules = read_rules(str(pc.path(table["file"])))
    _warn_about_statuses(rules)
    return rules


RULES = _settings()


def _match(field: str) -> tuple[Rule, re.Match | None] | None:
    i = 0
    while i < len(RULES):
        rule = RULES[i]
        i += 1
        if rule.action == "endif":
            continue
        found = (rule.pattern.match if rule.anchored else rule.pattern.search)(field)
        if (found is None) != rule.negated:  # no hit
            if rule.action == "if":
                i = rule.end + 1  # past its endif
            continue
        if rule.action != "if":
            return rule, found
    return None


def _expand(text: tuple, found: re.Match | None) -> str:
    return "".join(piece if isinstance(piece, str) else found.group(piece) or "" for piece in text)


def _reply(action: str, text: str) -> tuple[int, str, str]:
    """(code, status, text) of a REJECT or DEFER, as Postfix's cleanup (cleanup_act) makes it: the
    status the text starts with, else the default; a REJECT whose status is not 5.x.x and every
    DEFER are temporary (class 4: 451, the status's class made 4)."""
    if action == "REJECT":
        default_status, default_text = "5.7.1", "Message content rejected"
    else:
        default_status, default_text = "4.7.1", "Message content deferred"
    found = _STATUS.match(text)
    if found is None:
        status = default_status
    else:
        status, text = ".".join(found.groups()), text[found.end():]
        if action == "DEFER" or status[0] != "5":  # DEFER 5.7.1 and REJECT 2.0.0 are 4.x.x, as in Postfix
            status = "4" + status[1:]
    return (550 if status[0] == "5" else 451), status, text or default_text


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
            pc.log.info("header_checks: %s %s: %s %s", rule.action.lower(), where, status, reply)
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
        field = _FIELD.match(text)  # a $n in the name may have made it no field name
        try:
            if field is None:
                raise ValueError("not a header field, Name: value")
            if action == "REPLACE":
                message.replace_header_at(index, *field.groups())
            else:
                message.insert_header(index, *field.groups())
        except ValueError as e:
            pc.log.warning("header_checks: %s %r not done: %s", action.lower(), text, e)
    return None
