import pytest

import portcullis as pc


def make_conn(**kw):
    return pc.Connection("S1", "192.0.2.1", 40000, **kw)


def test_connection_attributes():
    conn = make_conn(helo="client.example", tls=True, auth_user="alice")
    assert (conn.id, conn.client_ip, conn.client_port, conn.helo, conn.tls, conn.auth_user) == (
        "S1", "192.0.2.1", 40000, "client.example", True, "alice")
    conn.data["seen"] = 1
    assert conn.data == {"seen": 1}
    with pytest.raises(AttributeError):
        conn.client_ip = "203.0.113.9"  # type: ignore[misc]
    assert "192.0.2.1:40000" in repr(conn)


def test_connection_defaults():
    conn = pc.Connection("S2", "2001:db8::1")
    assert conn.helo is None and conn.tls is False and conn.auth_user is None and conn.data == {}


def test_transaction_envelope():
    tx = pc.Transaction(make_conn(), "a@b.example", ["c@d.example"], id="S1.1")
    assert tx.id == "S1.1" and tx.conn.id == "S1"
    assert isinstance(tx.sender, pc.Address) and str(tx.sender) == "a@b.example"
    assert tx.recipients == [pc.Address("c@d.example")]
    assert tx.spf is None and tx.dkim is None and tx.dmarc is None
    tx.data["x"] = 1
    assert "S1.1" in repr(tx)


def test_sender_assignment_validates():
    tx = pc.Transaction(make_conn())
    assert tx.sender.is_null
    tx.sender = "new@example.test"
    assert str(tx.sender) == "new@example.test"
    tx.sender = pc.Address("x@y.example")
    tx.sender = ""
    assert tx.sender.is_null
    for bad in ("nope", "a@b\r\nRCPT TO:<x@y>", "<a@b.example>", "Postmaster"):
        with pytest.raises(ValueError):
            tx.sender = bad
    with pytest.raises(TypeError):
        tx.sender = None  # type: ignore[assignment]


def test_recipients_assignable_and_mutable():
    tx = pc.Transaction(make_conn(), "a@b.example", ["c@d.example"])
    tx.recipients = ["x@y.example", pc.Address("z@y.example")]
    assert [str(r) for r in tx.recipients] == ["x@y.example", "z@y.example"]
    tx.recipients.append("w@y.example")
    tx.recipients.remove(pc.Address("x@y.example"))
    assert [str(r) for r in tx.recipients] == ["z@y.example", "w@y.example"]
    tx.recipients = []
    assert tx.recipients == []
    with pytest.raises(ValueError):
        tx.recipients = ["bad"]
    with pytest.raises(ValueError):
        tx.recipients = [""]
    with pytest.raises(TypeError):
        tx.recipients = "a@b.example"  # type: ignore[assignment]


def test_auth_results_types():
    spf = pc.SpfResult("pass", "example.test", None)
    assert spf.result == "pass"
    assert pc.DkimSignature("pass", "example.test", "sel").selector == "sel"
    assert pc.DmarcResult("none", "example.test").policy is None


def test_dkim_sign_takes_none_false_or_a_domain():
    tx = pc.Transaction(pc.Connection("S1", "192.0.2.1", 25), "a@example.test", ["b@example.net"])
    assert tx.dkim_sign is None
    tx.dkim_sign = False
    assert tx.dkim_sign is False
    tx.dkim_sign = "Example.TEST."
    assert tx.dkim_sign == "example.test"
    tx.dkim_sign = None
    assert tx.dkim_sign is None
    for bad in (True, 1, b"example.test", ["example.test"]):
        with pytest.raises(TypeError):
            tx.dkim_sign = bad
    for bad in ("", "a..b", "x" * 64 + ".test", ".", " "):
        with pytest.raises(ValueError):
            tx.dkim_sign = bad
