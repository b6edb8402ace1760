"""``Connection`` and ``Transaction``: what a hook knows about the session and the mail in it.

Connection and transaction state are kept apart (as in the daemon), so one
RSET drops exactly the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._address import Address, AddressList, as_sender


class Connection:
    """One client connection (an SMTP session), passed to on_connect, on_helo,
    on_auth and on_disconnect, and reachable as ``tx.conn``.

    The attributes reflect the daemon's state when the hook was called and are
    read-only; ``data`` is a dict of your own kept for the whole connection
    (across transactions), dropped at disconnect.
    """

    __slots__ = ("_id", "_client_ip", "_client_port", "_helo", "_tls", "_tls_version", "_tls_cipher", "_auth_user",
                 "data")

    def __init__(
        self,
        id: str,
        client_ip: str,
        client_port: int = 0,
        helo: str | None = None,
        tls: bool = False,
        auth_user: str | None = None,
    ) -> None:
        self._id = id
        self._client_ip = client_ip
        self._client_port = client_port
        self._helo = helo
        self._tls = tls
        self._tls_version: str | None = None
        self._tls_cipher: str | None = None
        self._auth_user = auth_user
        self.data: dict[str, Any] = {}

    @property
    def id(self) -> str:
        """The session id, as in every daemon log line about this connection."""
        return self._id

    @property
    def client_ip(self) -> str:
        """The client's IP address (``"192.0.2.1"``, ``"2001:db8::1"``)."""
        return self._client_ip

    @property
    def client_port(self) -> int:
        """The client's TCP port."""
        return self._client_port

    @property
    def helo(self) -> str | None:
        """The last accepted HELO/EHLO argument; None before it. (on_helo gets the new one as an argument.)"""
        return self._helo

    @property
    def tls(self) -> bool:
        """Whether the connection is encrypted (STARTTLS done, or implicit TLS)."""
        return self._tls

    @property
    def tls_version(self) -> str | None:
        """The TLS protocol version (``"TLSv1.3"``), or None without TLS."""
        return self._tls_version

    @property
    def tls_cipher(self) -> str | None:
        """The TLS cipher suite (``"TLS_AES_256_GCM_SHA384"``), or None without TLS."""
        return self._tls_cipher

    @property
    def auth_user(self) -> str | None:
        """The authenticated login, or None."""
        return self._auth_user

    def __repr__(self) -> str:
        return (
            f"<Connection {self._id} from {self._client_ip}:{self._client_port}"
            f" helo={self._helo!r} tls={self._tls} auth_user={self._auth_user!r}>"
        )


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """The upstream's final reply to a message (``on_delivered``): ``code`` 250 when it took it."""

    code: int
    status: str  #: the enhanced status code ("2.0.0"), "" when the upstream gave none
    text: str  #: the reply's text, lines joined with "\n"

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The SPF check of the MAIL FROM (RFC 7208)."""

    result: str  #: pass, fail, softfail, neutral, none, temperror or permerror
    domain: str
    explanation: str | None = None


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One DKIM signature's verification (RFC 6376)."""

    result: str  #: pass, fail, neutral, temperror or permerror
    domain: str
    selector: str


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC evaluation of the message (RFC 7489).

    ``domain`` is the From domain; ``policy`` what its record asks for
    (``p=``, or ``sp=`` for a subdomain under its organizational domain's
    record: none, quarantine or reject; None without a usable record);
    ``disposition`` what it asks for this message: "none" when it passed, else
    the policy, one step milder when ``pct=`` sampled the message out.
    Rejecting is the operator's choice: see ``policies/dmarc.py``.

    A From may name several domains (mailboxes of several domains, or
    several From fields): each is evaluated (RFC 7489 §6.6.1) and listed in
    ``from_domains``, and the result is the strictest failure among them
    (``domain`` the one it is for). ``unusable_from`` (result "permerror",
    ``domain`` empty) says the From gives no domain to evaluate: none, one
    that does not parse, an address literal, more than 8 domains, a header
    section over 1 MiB; a permerror without it is a broken DMARC record.
    """

    result: str  #: pass, fail, none, temperror or permerror
    domain: str
    policy: str | None = None
    disposition: str | None = None
    org_domain: str = ""  #: the From domain's organizational domain (Public Suffix List)
    pct: int = 100
    spf_aligned: bool = False  #: SPF passed for a domain aligned with the From domain
    dkim_aligned: bool = False  #: a DKIM signature passed for a domain aligned with it
    from_domains: tuple[str, ...] = ()  #: every author domain the From names, evaluated (A-labels)
    unusable_from: bool = False  #: the From gives no domain to evaluate (result permerror)
    #: fail: the newest ARC set's ARC-Authentication-Results report a pass aligned with every failing domain
    arc_aligned: bool = False


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The validation of the ARC chain the message arrived with (RFC 8617)."""

    result: str  #: pass, fail or none (no ARC set)
    instances: int = 0  #: ARC sets in the chain (each an intermediary that sealed it)
    sealers: tuple[str, ...] = ()  #: the domain (d=) of each ARC-Seal, the first intermediary first


class Transaction:
    """One mail transaction (MAIL, RCPT..., DATA), passed to on_mail, on_rcpt and on_data.

    ``sender`` and ``recipients`` are the envelope that will be delivered; a
    hook may rewrite both. Assigning ``sender`` takes a ``str`` or an
    ``Address`` and raises ``ValueError`` on bad syntax (``""`` is the null
    sender). ``recipients`` is a list of ``Address``; assign a new list or
    change it in place (a ``str`` is turned into an ``Address``, checked as it
    goes in). In on_rcpt the list holds the recipients accepted so far, not the
    one being decided: that one is added after the stage unless the verdict
    refuses, discards or redirects it.

    ``spf``, ``dkim``, ``dmarc`` and ``arc`` are None while the daemon runs no
    such check (``[checks]``): test ``if tx.spf is not None``. When set,
    ``spf`` is an ``SpfResult`` (before on_mail), ``dkim`` a list of
    ``DkimSignature``, ``dmarc`` a ``DmarcResult`` and ``arc`` an
    ``ArcResult`` (before on_data).

    ``smtputf8`` and ``body_8bit`` say what the client declared on MAIL
    (``SMTPUTF8``, RFC 6531; ``BODY=8BITMIME``, RFC 6152); read only. Without
    SMTPUTF8, header values a hook adds or replaces that are not ASCII are
    sent as RFC 2047 encoded-words.

    ``dkim_sign`` chooses how the message is DKIM signed on its way out
    (``[dkim_sign]``): None (the default) leaves it to the config (mail from an
    authenticated client, or one in ``[dkim_sign] networks``, whose From domain
    is listed); False does not sign; a domain that a ``[dkim_sign]`` key lists
    signs as that domain, with each of its keys, whoever sent it. Read when the message goes upstream, after
    ``on_data``. ``arc_seal = False`` sends the message without our ARC seal
    (``[arc_seal]`` seals every relayed message otherwise; None is the default).

    ``data`` is a dict of your own kept for this transaction; RSET or the
    next MAIL starts a new one.
    """

    __slots__ = ("_conn", "_id", "_sender", "_recipients", "_smtputf8", "_body_8bit", "spf", "dkim", "dmarc",
                 "arc", "_dkim_sign", "_arc_seal", "data")

    def __init__(
        self,
        conn: Connection,
        sender: Address | str = "",
        recipients: Iterable[Address | str] = (),
        id: str = "",
        smtputf8: bool = False,
        body_8bit: bool = False,
    ) -> None:
        self._conn = conn
        self._id = id
        self._smtputf8 = bool(smtputf8)
        self._body_8bit = bool(body_8bit)
        self._sender = as_sender(sender)
        self._recipients = AddressList(recipients)
        self.spf: SpfResult | None = None
        self.dkim: list[DkimSignature] | None = None
        self.dmarc: DmarcResult | None = None
        self.arc: ArcResult | None = None
        self._dkim_sign: str | bool | None = None
        self._arc_seal: bool | None = None
        self.data: dict[str, Any] = {}

    @property
    def conn(self) -> Connection:
        """The connection this transaction runs on."""
        return self._conn

    @property
    def id(self) -> str:
        """The transaction id (``<session id>.<n>``), as in the daemon's log and Received header."""
        return self._id

    @property
    def smtputf8(self) -> bool:
        """Whether the client said SMTPUTF8 on MAIL (RFC 6531): header values may then be UTF-8 (RFC 6532)."""
        return self._smtputf8

    @property
    def body_8bit(self) -> bool:
        """Whether the client said BODY=8BITMIME on MAIL (RFC 6152)."""
        return self._body_8bit

    @property
    def sender(self) -> Address:
        """The envelope sender (``Address("")`` for ``<>``). Assignable: str or Address."""
        return self._sender

    @sender.setter
    def sender(self, value: Address | str) -> None:
        self._sender = as_sender(value)

    @property
    def recipients(self) -> AddressList:
        """The recipients that will be delivered. Assignable, and changeable in place."""
        return self._recipients

    @recipients.setter
    def recipients(self, value: Iterable[Address | str]) -> None:
        if isinstance(value, (str, Address)):
            raise TypeError("recipients is a list of addresses; to set one, assign [address]")
        self._recipients = AddressList(value)

    @property
    def dkim_sign(self) -> str | bool | None:
        """How the message is signed: None (the config decides), False (not signed) or the domain to sign as."""
        return self._dkim_sign

    @dkim_sign.setter
    def dkim_sign(self, value: str | bool | None) -> None:
        if value is True or not (value is None or value is False or isinstance(value, str)):
            raise TypeError("dkim_sign is None, False or a domain (str)")
        if isinstance(value, str):
            value = value.strip().lower().rstrip(".")
            if not value or len(value) > 253 or any(not label or len(label) > 63 for label in value.split(".")):
                raise ValueError(f"dkim_sign: {value!r} is not a domain")
        self._dkim_sign = value

    @property
    def arc_seal(self) -> bool | None:
        """False: the message goes without our ARC seal; None: [arc_seal] decides."""
        return self._arc_seal

    @arc_seal.setter
    def arc_seal(self, value: bool | None) -> None:
        if value is not None and value is not False:
            raise TypeError("arc_seal is None or False")
        self._arc_seal = value

    def __repr__(self) -> str:
        rcpts = ", ".join(f"<{r}>" for r in self._recipients)
        return f"<Transaction {self._id} from=<{self._sender}> to=[{rcpts}]>"
