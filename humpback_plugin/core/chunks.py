"""Work split into chunks for processes elsewhere: the pieces every engine shares."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

from humpback_plugin.core.errors import HumpbackError

T = TypeVar("T")


class WorkerError(HumpbackError):
    """An error in a worker that could not travel back as itself."""


def run_chunk(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    try:
        return [fn(item) for item in chunk]
    except Exception as exc:
        # An exception that cannot be rebuilt in the calling process (a class whose
        # __init__ wants other arguments) would leave the pool waiting forever.
        try:
            copy.deepcopy(exc)
        except Exception:  # noqa: BLE001 - any failure means it cannot travel
            raise WorkerError(f"{type(exc).__name__}: {exc}") from None
        raise


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
