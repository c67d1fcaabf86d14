"""Messages to the person at the terminal, on stderr (stdout carries results)."""

from __future__ import annotations

import sys
from collections.abc import Callable

Say = Callable[[str], None]


def say(message: str) -> None:
    """One line of progress or a warning on stderr."""
    print(message, file=sys.stderr, flush=True)
