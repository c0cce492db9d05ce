"""The REST front end of the local server, on aiohttp.

One asyncio event loop (in its own thread) owns every connection: a slow or silent client holds a
socket and a few KB, never a thread. Bodies are read with a cap (``--max_request_bytes``, also
after gzip / deflate decoding) and a deadline (``--rest_api_timeout_in_ms``); the request itself
runs on a bounded thread pool (``--rest_api_num_threads``) under the same deadline. Every answer,
errors included (unknown methods, malformed HTTP, oversized or late bodies), is JSON
``{"error": ...}``; a client that disconnects mid-request is logged on one line.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from kerascls.errors import UserError
from kerascls.serving.jsonwire import error_body

log = logging.getLogger("kerascls.serving")

_JSON = "application/json"
_READ_CHUNK = 1 << 16


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _json_response(status: int, message: str, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=error_body(message), content_type=_JSON)
    if close:
        response.force_close()
    return response


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering protocol errors as JSON instead of text."""

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        if request.writer is not None and request.writer.output_size > 0:
            raise ConnectionError("the response was already started")
        if status >= 500:
            log.error("REST %s: internal error", request.remote, exc_info=exc)
            return _json_response(500, f"Internal error: {type(exc).__name__}", close=True)
        text = f"{exc or message or 'bad request'}".splitlines()[0]
        log.info("REST %s: malformed HTTP request (%d): %s", request.remote, status, text)
        return _json_response(status, f"Malformed request: {text}", close=True)


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class RestFrontEnd:
    """Serves ``service.rest(method, path, body)`` over HTTP/1.1.

    Args:
        service: the :class:`kerascls.serving.server.Service`.
        host, port: where to listen (port 0 picks a free one).
        max_request_bytes: largest body, after decompression.
        threads: requests run at once.
        timeout: seconds to read a body and seconds to answer it.
        metrics_path: GET path of the Prometheus page, or None.
        render_metrics: callable returning the page's text.
    """

    def __init__(
        self,
        service,
        host: str,
        port: int,
        max_request_bytes: int,
        threads: int,
        timeout: float,
        metrics_path: str | None = None,
        render_metrics=None,
    ):
        self.service = service
        self.host, self.requested_port = host, port
        self.max_request_bytes = max_request_bytes
        self.timeout = timeout
        self.metrics_path, self.render_metrics = metrics_path, render_metrics
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rest")
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> int:
        """Open the port; returns it."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve():
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # noqa: BLE001 - reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=serve, name="rest-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.pool.shutdown(wait=False)
            exc = failure[0]
            if isinstance(exc, OSError):
                raise UserError(
                    f"cannot listen for REST on {self.host}:{self.requested_port}: "
                    f"{exc.strerror or exc}"
                ) from None
            raise exc
        return self.port

    async def _open(self) -> None:
        server = _Server(
            self._handle,
            max_line_size=16384,
            max_field_size=16384,
            auto_decompress=False,
            keepalive_timeout=75,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.requested_port, backlog=1024, reuse_address=True
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        """Close the port and every connection (in-flight requests get 2 s), then the loop."""
        if self._loop is not None and self._thread is not None:
            closing = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            try:
                closing.result(timeout=10)
            except Exception as exc:  # noqa: BLE001 - stopping goes on regardless
                log.warning("REST shutdown: %s", exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- requests --------------------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await asyncio.wait_for(self._read_body(request), self.timeout)
        except _Refused as exc:
            return _json_response(exc.status, exc.message, close=True)
        except asyncio.TimeoutError:
            return _json_response(
                408,
                f"the request body did not arrive within {self.timeout:g} s "
                "(--rest_api_timeout_in_ms)",
                close=True,
            )
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            log.info("REST %s: client went away mid-request (%s)", request.remote, exc or "EOF")
            return _json_response(400, "incomplete request body", close=True)
        except Exception as exc:  # noqa: BLE001 - aiohttp's payload errors: a 400, not a crash
            name = type(exc).__name__
            if "Payload" in name or "Connection" in name:
                log.info("REST %s: bad or interrupted body: %s: %s", request.remote, name, exc)
                return _json_response(400, f"malformed request body: {exc}", close=True)
            raise
        path = request.rel_url.raw_path
        if self.metrics_path and path == self.metrics_path and request.method == "GET":
            return web.Response(
                text=self.render_metrics(), content_type="text/plain", charset="utf-8"
            )
        if not path.lower().startswith("/v1/"):
            return _json_response(
                404, f"Not found: {request.method} {path}. The API lives under /v1/models/"
            )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.pool, self.service.rest, request.method, path, body)
        try:
            status, payload, ctype = await asyncio.wait_for(future, self.timeout)
        except asyncio.TimeoutError:
            return _json_response(
                504, f"the request took longer than {self.timeout:g} s (--rest_api_timeout_in_ms)"
            )
        return web.Response(status=status, body=payload, content_type=ctype.split(";")[0])

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        cap = self.max_request_bytes
        length = request.content_length
        if length is not None and length > cap:
            raise _Refused(
                413,
                f"request body of {length} bytes is larger than the limit of {cap} bytes "
                "(--max_request_bytes)",
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "deflate"):
            raise _Refused(415, f"Content-Encoding {encoding} is not supported (gzip, deflate)")
        inflate = (
            zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            if encoding in ("gzip", "deflate")
            else None
        )
        parts, total = [], 0
        while True:
            chunk = await request.content.read(_READ_CHUNK)
            if not chunk:
                break
            if inflate is not None:
                try:
                    chunk = inflate.decompress(chunk, cap + 1 - total)
                except zlib.error as exc:
                    raise _Refused(400, f"malformed {encoding} request body: {exc}") from None
                if inflate.unconsumed_tail:
                    total = cap + 1
            total += len(chunk)
            if total > cap:
                raise _Refused(
                    413,
                    f"request body is larger than the limit of {cap} bytes (--max_request_bytes)",
                )
            parts.append(chunk)
        return b"".join(parts)
