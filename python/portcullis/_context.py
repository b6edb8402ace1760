"""Which session, and which engine generation, the running hook belongs to.

The engine sets these context variables around every hook call. asyncio
tasks copy the context when they are created; hooks run in executor threads
get it through ``contextvars.copy_context().run`` (``run_in_executor`` alone
would not carry it), so ``portcullis.log`` and ``portcullis.config`` answer
for the right session in both kinds of hook.
"""

from __future__ import annotations

import contextvars
from typing import Any

#: The id of the session whose hook is running ("" outside any hook).
session_id: contextvars.ContextVar[str] = contextvars.ContextVar("portcullis_session_id", default="")

#: The config of the engine generation the running hook (or the policy module
#: being loaded) belongs to; None outside a hook.
engine_config: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "portcullis_engine_config", default=None
)

# The config of the host's current engine: what ``portcullis.config`` is
# outside any hook (e.g. in a policy's helper called from a test).
_default_config: dict[str, Any] = {}


def set_default_config(config: dict[str, Any]) -> None:
    """Makes ``config`` what ``portcullis.config`` returns outside any hook."""
    global _default_config
    _default_config = config


def current_config() -> dict[str, Any]:
    """The config dict ``portcullis.config`` stands for right now."""
    config = engine_config.get()
    return _default_config if config is None else config
