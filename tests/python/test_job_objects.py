"""The policy objects made in C for a job (bindings/job_objects.cpp): `_core.JobObjects`.

They bypass the classes' __init__, setting slots one by one, so each test
compares every slot the class declares with an object its public
constructor (or Message._lazy) makes: a slot added in Python and forgotten
in C fails here, not in a hook.
"""

import dataclasses
import gc
import weakref

import pytest

import portcullis as pc
import _portcullis_core as _core
from portcullis import _engine
from portcullis._address import AddressList
from portcullis._objects import ArcResult, DkimSignature, DmarcResult, SpfResult

OBJECTS = _engine._job_objects
MISSING = object()


def slots(obj):
    """Every slot the object's class declares: its value, or MISSING when unset (read through the
    slot itself: a lazy Message's __getattr__ would load and parse it)."""
    values = {}
    for cls in type(obj).__mro__:
        for name in cls.__dict__.get("__slots__", ()):
            try:
                values[name] = cls.__dict__[name].__get__(obj, cls)
            except AttributeError:
                values[name] = MISSING
    assert values, f"{type(obj).__name__} declares no slots"
    return values


class Session:
    """What the engine's _Session holds for transaction_of."""

    __slots__ = ("conn", "tx", "before")

    def __init__(self, conn):
        self.conn, self.tx, self.before = conn, None, None


def envelope(tx_id="S1.1", sender=("a", "example.test"), params=None, recipients=(), smtputf8=False, body_8bit=False,
             spf=None, dkim=None, dmarc=None, arc=None):
    return (tx_id, sender, {} if params is None else params, [tuple(r) for r in recipients], smtputf8, body_8bit,
            spf, dkim, dmarc, arc)


def test_an_address_has_every_slot_the_constructor_sets():
    made = OBJECTS.address(("Jo.Smith", "Example.TEST"), {"SIZE": "100", "BODY": None})
    public = pc.Address("Jo.Smith@Example.TEST", {"SIZE": "100", "BODY": None})
    assert type(made) is pc.Address and slots(made) == slots(public)
    assert str(made) == "Jo.Smith@Example.TEST" and made == public


def test_the_null_sender_and_postmaster():
    assert slots(OBJECTS.address(("", ""), {})) == slots(pc.Address(""))
    assert slots(OBJECTS.address(("Postmaster", ""), {})) == slots(pc.Address("Postmaster"))


def test_an_address_list_is_the_checked_list_type():
    made = OBJECTS.address_list([("b", "example.test"), ("c", "example.test")])
    assert type(made) is AddressList and made == [pc.Address("b@example.test"), pc.Address("c@example.test")]
    assert all(a.params == {} for a in made)
    with pytest.raises(ValueError):
        made.append("not an address")  # still checks on the way in


def test_a_new_transaction_has_every_slot_the_constructor_sets():
    conn = pc.Connection("S1", "192.0.2.1")
    s = Session(conn)
    tx = OBJECTS.transaction_of(s, envelope(params={"SIZE": "10"}, recipients=[("b", "example.test")],
                                            smtputf8=True, body_8bit=True))
    public = pc.Transaction(conn, pc.Address("a@example.test", {"SIZE": "10"}), ["b@example.test"], id="S1.1",
                            smtputf8=True, body_8bit=True)
    assert slots(tx) == slots(public)
    assert s.tx is tx and s.before == (tx.sender, list(tx.recipients)) and s.before[1] is not tx.recipients
    assert tx.sender is s.before[0] and tx.recipients[0] is s.before[1][0]  # the runner compares by identity


def test_the_same_transaction_id_keeps_the_transaction_and_its_data_and_takes_the_daemons_envelope():
    s = Session(pc.Connection("S1", "192.0.2.1"))
    tx = OBJECTS.transaction_of(s, envelope())
    tx.data["seen"] = 1
    tx.dkim_sign = False
    tx.sender = "rewritten@example.test"  # a rewrite the daemon did not apply
    again = OBJECTS.transaction_of(s, envelope(recipients=[("b", "example.test")]))
    assert again is tx and tx.data == {"seen": 1} and tx.dkim_sign is False
    assert str(tx.sender) == "a@example.test" and [str(r) for r in tx.recipients] == ["b@example.test"]
    other = OBJECTS.transaction_of(s, envelope(tx_id="S1.2"))
    assert other is not tx and other.data == {} and other.dkim_sign is None and s.tx is other


def test_recipients_the_daemon_added_join_the_transaction_as_a_new_envelope_would_make_it():
    conn = pc.Connection("S1", "192.0.2.1")
    s = Session(conn)
    tx = OBJECTS.transaction_of(s, envelope(params={"SIZE": "10"}, recipients=[("b", "example.test")]))
    tx.data["seen"] = 1
    sender, first, listed = tx.sender, tx.recipients[0], tx.recipients
    OBJECTS.add_recipients(s, tx, [("b", "example.test"), ("c", "example.test"), ("d", "example.test")], 1)
    fresh = Session(conn)
    made = OBJECTS.transaction_of(fresh, envelope(params={"SIZE": "10"}, recipients=[
        ("b", "example.test"), ("c", "example.test"), ("d", "example.test")]))
    made.data["seen"] = 1
    assert slots(tx) == slots(made) and type(tx.recipients) is AddressList
    assert s.tx is tx and tx.sender is sender and tx.recipients[0] is first  # kept, not made again
    assert tx.recipients is not listed and list(listed) == [first]  # the list hooks saw before is left alone
    assert s.before == (tx.sender, list(tx.recipients)) and s.before[1] is not tx.recipients
    assert all(a is b for a, b in zip(s.before[1], tx.recipients))  # the runner compares by identity
    with pytest.raises(ValueError):  # recipients that are not the envelope's first ones: transaction_of's job
        OBJECTS.add_recipients(s, tx, [("e", "example.test")], 2)


def test_check_results_become_their_classes():
    s = Session(pc.Connection("S1", "192.0.2.1"))
    spf = ("fail", "example.test", "see the policy")
    dkim = [("pass", "example.test", "s1"), ("fail", "other.test", "s2")]
    dmarc = ("pass", "example.test", "reject", "none", "example.test", 100, True, False)
    arc = ("pass", 1, ("forwarder.test",))
    try:
        tx = OBJECTS.transaction_of(s, envelope(spf=spf, dkim=dkim, dmarc=dmarc, arc=arc))
    except TypeError:
        pytest.fail("the test's result tuples no longer match the classes: update them")
    assert tx.spf == SpfResult(*spf) and tx.dkim == [DkimSignature(*d) for d in dkim]
    assert tx.dmarc == DmarcResult(*dmarc) and tx.arc == ArcResult(*arc)
    tx = OBJECTS.transaction_of(s, envelope())
    assert tx.spf is None and tx.dkim is None and tx.dmarc is None and tx.arc is None


def test_check_results_are_the_constructors_objects_slot_by_slot_and_stay_frozen():
    s = Session(pc.Connection("S1", "192.0.2.1"))
    dmarc = ("fail", "example.test", "reject", "reject", "example.test", 50, False, True)
    tx = OBJECTS.transaction_of(s, envelope(spf=("pass", "example.test", None), dkim=[], dmarc=dmarc))
    assert slots(tx.spf) == slots(SpfResult("pass", "example.test", None))
    assert slots(tx.dmarc) == slots(DmarcResult(*dmarc)) and hash(tx.dmarc) == hash(DmarcResult(*dmarc))
    assert tx.dkim == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.spf.result = "fail"


def job_objects_with(spf_result):
    return _core.JobObjects(connection=pc.Connection, session=_engine._Session, transaction=pc.Transaction,
                            address=pc.Address, address_list=AddressList, message=pc.Message, spf_result=spf_result,
                            dkim_signature=DkimSignature, dmarc_result=DmarcResult, arc_result=ArcResult)


def counting_init(cls):
    """cls with its __init__ counting its calls in cls.calls."""
    cls.calls = []
    made = cls.__init__

    def init(self, *args):
        cls.calls.append(args)
        made(self, *args)

    cls.__init__ = init
    return cls


@counting_init
@dataclasses.dataclass(frozen=True, slots=True)
class PlainResult:
    result: str
    domain: str
    explanation: str | None


@counting_init
@dataclasses.dataclass(frozen=True, slots=True)
class CheckedResult(PlainResult):
    def __post_init__(self):
        if self.result not in ("pass", "fail"):
            raise ValueError(self.result)


@counting_init
@dataclasses.dataclass(slots=True)
class MutableResult:
    result: str
    domain: str
    explanation: str | None


@counting_init
class NotADataclass:
    def __init__(self, *args):
        self.args = args


def test_a_frozen_dataclass_result_is_made_without_its_init_and_any_other_class_is_called():
    spf = ("pass", "example.test", None)
    made = job_objects_with(PlainResult).transaction_of(Session(pc.Connection("S1", "192.0.2.1")), envelope(spf=spf))
    assert PlainResult.calls == [] and made.spf == PlainResult(*spf)
    for cls in (CheckedResult, MutableResult, NotADataclass):  # a __post_init__, a mutable class, no dataclass
        made = job_objects_with(cls).transaction_of(Session(pc.Connection("S1", "192.0.2.1")), envelope(spf=spf))
        assert cls.calls == [spf] and isinstance(made.spf, cls)
    with pytest.raises(ValueError):  # its __post_init__ ran
        job_objects_with(CheckedResult).transaction_of(Session(pc.Connection("S1", "192.0.2.1")),
                                                       envelope(spf=("none", "example.test", None)))


@pytest.mark.parametrize("bad", [
    ("S1.1",),  # too short
    envelope(sender=("only one part",)),
    envelope(recipients=[("b",)]),
    envelope(spf=("pass",)),  # not SpfResult's fields
])
def test_a_malformed_envelope_raises_and_leaves_the_session_alone(bad):
    s = Session(pc.Connection("S1", "192.0.2.1"))
    with pytest.raises(TypeError):
        OBJECTS.transaction_of(s, bad)
    assert s.tx is None and s.before is None


def test_a_lazy_message_has_every_slot_message_lazy_sets():
    def load():
        return b"Subject: hi\r\n\r\nbody\r\n"

    for smtputf8, whole in [(False, None), (True, True), (False, False)]:
        made = OBJECTS.lazy_message(load, smtputf8, whole)
        assert slots(made) == slots(pc.Message._lazy(load, smtputf8=smtputf8, head_whole=whole))
    made = OBJECTS.lazy_message(load, False)
    assert made.get("Subject") == "hi" and made.body == b"body\r\n"


def test_nothing_is_kept_of_what_the_objects_were_made_from():
    class Loader:
        def __call__(self):
            return b"\r\n"

    loader = Loader()
    watch = weakref.ref(loader)
    message = OBJECTS.lazy_message(loader, False)
    del loader, message
    gc.collect()
    assert watch() is None


VIEW = ("S1", "192.0.2.1", 2525, "client.test", True, "TLSv1.3", "TLS_AES_256_GCM_SHA384", "jo")


def test_a_connection_has_every_slot_the_constructor_sets():
    made = OBJECTS.connection(VIEW)
    public = pc.Connection("S1", "192.0.2.1", 2525, helo="client.test", tls=True, auth_user="jo")
    expected = slots(public)
    expected.update(_tls_version="TLSv1.3", _tls_cipher="TLS_AES_256_GCM_SHA384")  # no constructor argument for them
    assert type(made) is pc.Connection and slots(made) == expected


def test_an_updated_connection_keeps_its_id_and_data():
    conn = OBJECTS.connection(("S1", "192.0.2.1", 2525, None, False, None, None, None))
    conn.data["seen"] = 1
    OBJECTS.update_connection(conn, ("ignored", *VIEW[1:]))
    assert conn.id == "S1" and conn.data == {"seen": 1}
    assert (conn.helo, conn.tls, conn.tls_version, conn.auth_user) == ("client.test", True, "TLSv1.3", "jo")
    with pytest.raises(TypeError):
        OBJECTS.update_connection(conn, VIEW[:3])


def test_a_session_is_bound_to_its_engine_with_nothing_else_yet():
    host = _engine.EngineHost([])
    session = OBJECTS.session(host.engine, VIEW)
    assert type(session) is _engine._Session
    values = slots(session)
    assert all(value is not MISSING for value in values.values()), "a _Session slot the C side does not set"
    assert values["engine"] is host.engine and values["connection"] is VIEW
    assert slots(values["conn"]) == slots(OBJECTS.connection(VIEW))
    assert values["scope"] == ("S1", host.engine.config, host.engine.folder)
    assert (values["context"], values["tx"], values["envelope"], values["before"]) == (None, None, None, (None, []))
