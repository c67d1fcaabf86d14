"""Session-scoped real vLLM server for tests marked ``@pytest.mark.vllm``.

Import it from ``tests/conftest.py``::

    from tests.vllm_fixture import vllm_server  # noqa: F401

The first run installs the server venv and converts the model under
``$HUMPBACK_HOME`` (default ``~/.cache/humpback``, ~2-3 min); later runs reuse it.
The server gets a free port and a private state dir, so it never clashes with a
user's own ``humpback server start``.

If vLLM cannot be installed or started the tests are skipped, unless
``HUMPBACK_REQUIRE_REAL=1``, which turns that into a failure.

Set ``HUMPBACK_TEST_VLLM_URL`` (e.g. ``http://127.0.0.1:8000/v1``) and
``HUMPBACK_TEST_VLLM_MODEL`` to test against an already running server instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest

from humpback_plugin.core.errors import ServerError
from humpback_plugin.vllm.install import InstallInfo, ensure_installed
from humpback_plugin.vllm.server import ServerHandle, start_server, stop_server


def _unavailable(reason: str) -> None:
    if os.environ.get("HUMPBACK_REQUIRE_REAL"):
        pytest.fail(f"real vLLM required but unavailable: {reason}", pytrace=False)
    pytest.skip(f"real vLLM unavailable: {reason}")


def require_vllm_install() -> InstallInfo:
    """The server venv + model, installing them once; skip/fail if impossible."""
    try:
        return ensure_installed()
    except (ServerError, OSError) as exc:
        _unavailable(str(exc)[-2000:])
        raise  # unreachable: skip/fail raise


@dataclasses.dataclass(frozen=True)
class ExternalServer:
    base_url: str
    model: str


@pytest.fixture(scope="session")
def vllm_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerHandle | ExternalServer]:
    """A real vLLM OpenAI server; yields an object with ``.base_url`` (ends in /v1)
    and ``.model`` (served model name)."""
    url = os.environ.get("HUMPBACK_TEST_VLLM_URL")
    if url:
        yield ExternalServer(
            base_url=url.rstrip("/"),
            model=os.environ.get("HUMPBACK_TEST_VLLM_MODEL", "smollm2-135m"),
        )
        return
    require_vllm_install()
    state_dir = tmp_path_factory.mktemp("vllm-server")
    try:
        handle = start_server(port=0, state_dir=state_dir)
    except ServerError as exc:
        _unavailable(str(exc)[-4000:])
        raise
    try:
        yield handle
    finally:
        stop_server(state_dir=state_dir)
