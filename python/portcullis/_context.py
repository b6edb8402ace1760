"""Which session, and which engine generation, the running hook belongs to.

The engine sets this context variable around every hook call. asyncio
tasks copy the context when they are created; hooks run in executor threads
get it through ``contextvars.copy_context().run`` (``run_in_executor`` alone
would not carry it), so ``portcullis.log`` and ``portcullis.config`` answer
for the right session in both kinds of hook.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: (session id, engine config, config folder) of the running hook: the id of
#: the session ("" outside any hook), and the config of the engine generation
#: the hook (or the policy module being loaded) belongs to with the folder of
#: its file (None outside a hook). One variable, so a hook call sets and
#: resets one context entry.
scope: contextvars.ContextVar[tuple[str, dict[str, Any] | None, Path | None]] = contextvars.ContextVar(
    "portcullis_scope", default=("", None, None)
)

# The config of the host's current engine and its folder: what
# ``portcullis.config`` and ``config_dir`` are outside any hook (e.g. in a
# policy's helper called from a test).
_default_config: dict[str, Any] = {}
_default_folder: Path | None = None


def set_default_config(config: dict[str, Any], folder: Path | None = None) -> None:
    """Makes ``config`` (read from a file in ``folder``) what ``portcullis.config`` returns outside any hook."""
    global _default_config, _default_folder
    _default_config, _default_folder = config, folder


def current_config() -> dict[str, Any]:
    """The config dict ``portcullis.config`` stands for right now."""
    config = scope.get()[1]
    return _default_config if config is None else config


# What pc.now() reads: the wall clock, or a test's (portcullis.testing.Harness(clock=...)).
clock: Callable[[], float] = time.time


def config_folder() -> Path:
    """The folder of the config file ``portcullis.config`` came from (the current one without a file)."""
    _, config, folder = scope.get()
    if config is None:
        folder = _default_folder
    return Path.cwd() if folder is None else folder


def session_id() -> str:
    """The id of the session whose hook is running ("" outside any hook)."""
    return scope.get()[0]
