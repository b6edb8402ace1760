"""Building jobs as the daemon does (docs/policy-engine.md), for the engine tests."""

from __future__ import annotations

import asyncio
from typing import Any

from portcullis._engine import job_from_dict, result_as_dict

RESULT_KEYS = {"verdict", "auth", "error", "sender", "recipients", "message"}


def session(sid: str = "S1", **kw: Any) -> dict[str, Any]:
    snap = {"id": sid, "client_ip": "192.0.2.1", "client_port": 40000, "helo": None, "tls": False,
            "auth_user": None}
    snap.update(kw)
    return snap


def tx(tid: str = "S1.1", sender: str = "a@example.test", recipients: list[str] | None = None,
       **kw: Any) -> dict[str, Any]:
    snap = {"id": tid, "sender": sender, "sender_params": {}, "recipients": recipients or []}
    snap.update(kw)
    return snap


def job(stage: str, sid: str = "S1", tx_snapshot: dict[str, Any] | None = None, **kw: Any) -> Any:
    """A ``_core.Job``, as the daemon sends it, from the dict form."""
    j = {"stage": stage, "session": session(sid, **kw.pop("session", {})), "tx": tx_snapshot}
    j.update(kw)
    return job_from_dict(j)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def ask(host: Any, j: Any) -> dict[str, Any]:
    """``host.dispatch(j)``, its result in the dict form (docs/policy-engine.md)."""
    return result_as_dict(await host.dispatch(j))
