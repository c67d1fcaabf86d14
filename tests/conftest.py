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


def shared_file(relative: str) -> Path:
    """A file or folder of the read-only public data beside the checkout.

    Skipped where it is absent (a user's machine has no ``../shared``), but a failure when
    ``HUMPBACK_REQUIRE_SHARED`` is set (``make test`` sets it where ``../shared/data`` exists),
    so a test cannot pass by skipping on a developer or CI machine.
    """
    path = SHARED / relative
    if not path.exists():
        if os.environ.get("HUMPBACK_REQUIRE_SHARED"):
            pytest.fail(f"{path} is missing (HUMPBACK_REQUIRE_SHARED is set)", pytrace=False)
        pytest.skip(f"{path} is absent (only developer and CI machines have it)")
    return path


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray instance (``ray.init(num_cpus=2)``) for the session, started on first use;
    its address lets CLI subprocesses join it as they would a cluster. Ray missing is a
    failure under ``HUMPBACK_REQUIRE_REAL`` (``make test``), else a skip."""
    try:
        import ray
    except ImportError:
        if os.environ.get("HUMPBACK_REQUIRE_REAL"):
            pytest.fail("Ray is not installed (pip install -e '.[ray]')", pytrace=False)
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only public data folder beside the checkout (see :func:`shared_file`)."""
    return shared_file("data")
