"""Shared fixtures.

Real-server tests use the session fixture ``vllm_server`` (a real vLLM started once on
127.0.0.1). Set ``HUMPBACK_REQUIRE_REAL=1`` (``make test`` and CI do) so a missing vLLM
or Axolotl fails the run instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.vllm_fixture import vllm_server  # noqa: F401 - a fixture, used by name

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only public data beside the checkout; skipped where it is absent."""
    data = SHARED / "data"
    if not data.is_dir():
        if os.environ.get("HUMPBACK_REQUIRE_SHARED"):
            pytest.fail(f"{data} is missing")
        pytest.skip(f"{data} is absent (only developer and CI machines have it)")
    return data
