"""Real local HTTP servers (aiohttp) inside a test's event loop, for the client's tests.

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(ok_body("hi"))

    async with serve(handler) as base_url:       # http://127.0.0.1:PORT
        ...

``handler`` answers every path and method; ``truncated(request, body)`` sends a body cut
short, a fault no well-behaved server sends. ``dead_url()`` is a URL nothing listens on
(connection refused).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` on 127.0.0.1 (a free port) while the block runs; yields the URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def dead_url() -> str:
    """A 127.0.0.1 URL whose port was just free: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Announce ``body``'s full length, send half of it, close: a body cut short."""
    resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    resp.content_length = len(body)
    await resp.prepare(request)
    await resp.write(body[: len(body) // 2])
    assert request.transport is not None
    request.transport.close()
    return resp
