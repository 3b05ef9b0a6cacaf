"""NeuronMCP's optional HTTP transport: POST /mcp, server-sent events at GET /mcp/stream, /health, /metrics."""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Iterator

from neuronref import VERSION, httpd
from neuronref.httpd import Request, Response, json_response, route
from neuronref.metrics import CONTENT_TYPE, Metrics

from .config import McpConfig
from .protocol import PARSE_ERROR, Protocol, rpc_error

SSE_INTERVAL_S = 1.0


class McpHttp:
    def __init__(self, config: McpConfig, protocol: Protocol, metrics: Metrics, log: logging.Logger) -> None:
        self.config = config
        self.protocol = protocol
        self.metrics = metrics
        self.log = log
        self.stopping = threading.Event()
        self.router = httpd.Router(
            [
                route("GET", "/health", self.handle_health),
                route("GET", "/metrics", self.handle_metrics),
                route("POST", "/mcp", self.authenticated(self.handle_rpc)),
                route("GET", "/mcp/stream", self.authenticated(self.handle_stream)),
            ]
        )

    def site(self) -> httpd.Site:
        return httpd.Site(self.router, self.metrics, self.log, f"neurondb-mcp/{VERSION}", stopping=self.stopping)

    def authenticated(self, handler: httpd.Handler) -> httpd.Handler:
        def check(request: Request) -> httpd.Answer:
            if not self.config.auth_disabled:
                token, expected = request.bearer() or "", self.config.auth_token or ""
                if not expected or not hmac.compare_digest(token.encode(), expected.encode()):
                    return json_response(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            return handler(request)

        return check

    def handle_health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def handle_metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render().encode(), CONTENT_TYPE)

    def handle_rpc(self, request: Request) -> Response:
        try:
            payload = request.json()
        except ValueError:
            return json_response(400, rpc_error(None, PARSE_ERROR, "parse error"))
        answer = self.protocol.handle(payload)
        if answer is None:
            return Response(202, b"", None)
        return json_response(200, answer)

    def handle_stream(self, request: Request) -> httpd.Stream:
        # No X-Accel-Buffering header: the real server sends none, so a proxy that buffers
        # (Nginx's default) must be configured not to, and a test through the edge shows it.
        return httpd.Stream(self._events(), "text/event-stream", {"Cache-Control": "no-cache"})

    def _events(self) -> Iterator[bytes]:
        count = 0
        yield _event(count, "endpoint", {"endpoint": "/mcp", "server": "neurondb-mcp"})
        next_at = time.monotonic() + SSE_INTERVAL_S
        while not self.stopping.wait(max(next_at - time.monotonic(), 0)):
            count += 1
            yield _event(count, "heartbeat", {"count": count, "time": time.time()})
            next_at += SSE_INTERVAL_S


def _event(event_id: int, name: str, data: object) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()
