"""What every model benchmark needs: the server to measure against.

``--base-url`` names a running server; without it the embedded one (`humpback server`)
is started in a temporary folder for the benchmark and stopped after it.
"""

from __future__ import annotations

import contextlib
import tempfile


def server_for(args, stack: contextlib.ExitStack) -> tuple[str, str]:
    """(base URL, model) of ``args.base_url``/``args.model``, or of a fresh embedded server
    that ``stack`` stops."""
    if args.base_url:
        return args.base_url, args.model
    from humpback_plugin.vllm.server import running_server

    state = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-"))
    handle = stack.enter_context(running_server(port=0, state_dir=state))
    return handle.base_url, handle.model
