"""A small threaded HTTP/1.1 server: routes with {param} templates, JSON answers, WebSocket
upgrades, streamed answers (server-sent events), CORS, metrics and an access log.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import socketserver
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import websocket
from .logs import fields
from .metrics import Metrics

MAX_BODY_BYTES = 1 << 20
IDLE_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 10.0
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"})


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # http.client.HTTPMessage: case-insensitive get()
    body: bytes
    client: str
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body.decode("utf-8"))

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def bearer(self) -> str | None:
        """The token of an Authorization: Bearer header."""
        scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

    def cookie(self, name: str) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WebSocketSession:
    """What a handler returns to accept a WebSocket: run(ws) is called after the 101 answer."""

    run: Callable[[websocket.WebSocket], None]


@dataclass
class Stream:
    """An answer written piece by piece; every chunk is flushed to the client as it comes."""

    chunks: Iterator[bytes]
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


Answer = Response | WebSocketSession | Stream
Handler = Callable[[Request], Answer]


def json_response(status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
    body = (json.dumps(document, separators=(",", ":"), default=str) + "\n").encode()
    return Response(status, body, "application/json", dict(headers or {}))


def error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    pattern: re.Pattern[str]


def route(method: str, template: str, handler: Handler) -> Route:
    """{name} in the template matches one path segment and becomes request.params[name]."""
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return Route(method, template, handler, re.compile(regex))


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], str, list[str]]:
        """(route, params, metrics label, allowed methods when the path exists for others)."""
        allowed: list[str] = []
        label = "unmatched"
        for candidate in self.routes:
            found = candidate.pattern.fullmatch(path)
            if found is None:
                continue
            if candidate.method == method:
                params = {key: urllib.parse.unquote(value) for key, value in found.groupdict().items()}
                return candidate, params, candidate.template, []
            allowed.append(candidate.method)
            label = candidate.template
        return None, {}, label, allowed


@dataclass
class Site:
    """What the handler class needs from the service."""

    router: Router
    metrics: Metrics
    log: logging.Logger
    server_header: str
    cors_origins: list[str] | None = None  # None: no CORS headers at all
    stopping: threading.Event = field(default_factory=threading.Event)
    active: int = 0
    active_lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and the 101 of a WebSocket handshake must be HTTP/1.1
    timeout = IDLE_TIMEOUT_S
    sys_version = ""
    server: _Server

    def version_string(self) -> str:
        return self.server.site.server_header

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: _dispatch writes its own access log line."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.site.log.info("http: " + format % args, extra=fields(remote=self.client_address[0]))

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def _dispatch(self) -> None:
        site = self.server.site
        started = time.monotonic()
        with site.active_lock:
            site.active += 1
        try:
            status, label = self._serve(site)
        finally:
            with site.active_lock:
                site.active -= 1
        seconds = time.monotonic() - started
        method = self.command if self.command in METHODS else "OTHER"
        site.metrics.observe(method, label, status, seconds)
        # The path without its query: a browser WebSocket may carry its key in ?api_key=.
        path = urllib.parse.urlsplit(self.path).path
        site.log.info(
            "request",
            extra=fields(
                method=self.command,
                path=path,
                status=status,
                duration_ms=round(seconds * 1000, 2),
                remote=self.client_address[0],
            ),
        )

    def _serve(self, site: Site) -> tuple[int, str]:
        parts = urllib.parse.urlsplit(self.path)
        path = parts.path or "/"
        body, problem = self._read_body()
        if problem is not None:
            self._send(problem)
            return problem.status, "unmatched"
        if self.command == "OPTIONS" and site.cors_origins is not None and self.headers.get("Origin"):
            return self._preflight(site), "preflight"
        found, params, label, allowed = site.router.match(self.command, path)
        if found is None:
            if allowed:
                answer: Answer = json_response(405, {"error": "method not allowed"}, {"Allow": ", ".join(allowed)})
            else:
                answer = error(404, "not found")
        else:
            request = Request(
                self.command,
                path,
                urllib.parse.parse_qs(parts.query),
                self.headers,
                body,
                self.client_address[0],
                params,
            )
            try:
                answer = found.handler(request)
            except Exception:
                site.log.exception("unhandled error", extra=fields(path=path))
                answer = error(500, "internal error")
        if isinstance(answer, WebSocketSession):
            return self._upgrade(answer), label
        if isinstance(answer, Stream):
            self._stream(answer)
            return 200, label
        self._send(answer)
        return answer.status, label

    def _read_body(self) -> tuple[bytes, Response | None]:
        raw = self.headers.get("Content-Length")
        if raw is None:
            if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
                self.close_connection = True
                return b"", error(411, "send a Content-Length")
            return b"", None
        if not raw.strip().isdigit():
            self.close_connection = True
            return b"", error(400, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return b"", error(413, f"bodies are limited to {MAX_BODY_BYTES} bytes")
        try:
            return self.rfile.read(length), None
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return b"", error(408, "the body did not arrive")

    def _cors_headers(self, site: Site) -> dict[str, str]:
        origin = self.headers.get("Origin")
        if site.cors_origins is None or not origin:
            return {}
        if "*" in site.cors_origins:
            return {"Access-Control-Allow-Origin": "*"}
        if origin in site.cors_origins:
            return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
        return {"Vary": "Origin"}

    def _preflight(self, site: Site) -> int:
        headers = self._cors_headers(site)
        if "Access-Control-Allow-Origin" in headers:
            headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
            requested = self.headers.get("Access-Control-Request-Headers")
            headers["Access-Control-Allow-Headers"] = requested or "Authorization, Content-Type"
            headers["Access-Control-Max-Age"] = "600"
        self._send(Response(204, b"", None, headers))
        return 204

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            if response.content_type and response.body:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in {**self._cors_headers(self.server.site), **response.headers}.items():
                self.send_header(name, value)
            if self.close_connection or self.server.site.stopping.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def _upgrade(self, session: WebSocketSession) -> int:
        problem = websocket.upgrade_problem(self.command, self.headers)
        if problem is not None:
            self._send(json_response(426, {"error": problem}, {"Upgrade": "websocket"}))
            return 426
        self.send_response(101)
        for name, value in websocket.server_handshake_headers(self.headers["Sec-WebSocket-Key"]).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        self.connection.settimeout(None)  # a WebSocket may sit idle far longer than a request
        ws = websocket.WebSocket(self.rfile, self.connection, client=False)
        # Counted as finished for the drain at shutdown: a WebSocket would hold it forever.
        with self.server.site.active_lock:
            self.server.site.active -= 1
        try:
            session.run(ws)
        except Exception:
            self.server.site.log.exception("WebSocket session failed")
            ws.close(websocket.CLOSE_INTERNAL_ERROR)
        finally:
            ws.close()
            with self.server.site.active_lock:
                self.server.site.active += 1
        return 101

    def _stream(self, stream: Stream) -> None:
        self.close_connection = True  # no length and no chunked coding: the end of the body is the close
        try:
            self.send_response(200)
            self.send_header("Content-Type", stream.content_type)
            for name, value in {**self._cors_headers(self.server.site), **stream.headers}.items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.flush()
            with self.server.site.active_lock:
                self.server.site.active -= 1
            try:
                for chunk in stream.chunks:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            finally:
                with self.server.site.active_lock:
                    self.server.site.active += 1
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # WebSockets and streams must not keep the process alive at shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], site: Site) -> None:
        self.site = site
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn (a reverse DNS lookup that can stall start-up).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def stop_on_signals(stop: threading.Event, log: logging.Logger) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal, shutting down", extra=fields(signal=signal.Signals(signum).name))
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class HttpService:
    """A bound server running in a background thread."""

    def __init__(self, site: Site, host: str, port: int) -> None:
        self.site = site
        self._server = _Server((host, port), site)  # OSError when the address is taken
        self.address = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)

    def start(self) -> HttpService:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, give in-flight requests up to DRAIN_TIMEOUT_S to finish."""
        self.site.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.site.active_lock:
                if self.site.active <= 0:
                    break
            time.sleep(0.05)
