"""The event loop every stage runs in: uvloop's where it is installed, asyncio's otherwise.

At thousands of requests a second the loop's own work (selecting, scheduling callbacks,
socket reads and writes) is a tenth of a model stage's CPU; uvloop (libuv, the loop vLLM's
own server runs on) does it in C. ``HUMPBACK_EVENT_LOOP=asyncio`` picks the standard
library's loop, e.g. to rule the loop out when tracking down a problem.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOP_ENV = "HUMPBACK_EVENT_LOOP"


def uvloop_module() -> Any | None:
    """uvloop, unless it is missing (Windows) or turned off by ``$HUMPBACK_EVENT_LOOP``."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop").strip().lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the chosen loop (Ctrl-C and clean-up as asyncio.run's)."""
    uvloop = uvloop_module()
    if uvloop is None:
        return asyncio.run(main)
    return uvloop.run(main)
