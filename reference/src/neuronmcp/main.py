"""neurondb-mcp: JSON-RPC 2.0 on stdin/stdout (one message per line); exits 0 when stdin closes."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from neuronref import VERSION, logs
from neuronref.cli import Parser
from neuronref.env import ConfigError
from neuronref.httpd import HttpService
from neuronref.logs import fields
from neuronref.metrics import Metrics

from . import config as mcp_config
from .http import McpHttp
from .protocol import PARSE_ERROR, Database, Protocol, rpc_error

SERVICE = "neurondb-mcp"


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=SERVICE, description="NeuronMCP (reference build); settings from the environment.")
    parser.add_argument("--version", action="version", version=f"{SERVICE} {VERSION} (reference)")
    parser.parse_args(argv)
    try:
        settings = mcp_config.load(os.environ)
    except ConfigError as exc:
        logs.early_error(SERVICE, f"configuration error: {exc}", os.environ.get("NEURONDB_LOG_FORMAT"))
        return 1
    # stdout is the protocol: logs go to stderr only.
    log = logs.setup(SERVICE, settings.log_level, settings.log_format, sys.stderr)
    db = Database(settings.db, log)
    protocol = Protocol(db)
    http = None
    # Before the port opens: a SIGTERM right after it must still end in a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if settings.http_enabled:
        transport = McpHttp(settings, protocol, Metrics("neuronmcp", VERSION), log)
        try:
            http = HttpService(transport.site(), settings.http_host, settings.http_port).start()
        except OSError as exc:
            address = f"{settings.http_host}:{settings.http_port}"
            log.error("cannot listen", extra=fields(address=address, error=exc.strerror))
            return 1
        log.info(
            "HTTP transport listening",
            extra=fields(address=f"{settings.http_host}:{settings.http_port}", auth=not settings.auth_disabled),
        )
    log.info("serving MCP on stdio", extra=fields(db=settings.db.describe(), version=VERSION))
    try:
        serve_stdio(protocol)
        log.info("stdin closed, exiting")
    finally:
        if http is not None:
            http.stop()
        db.close()
    return 0


def serve_stdio(protocol: Protocol) -> None:
    for raw in sys.stdin.buffer:
        if not raw.strip():
            continue
        try:
            answer: Any = protocol.handle(json.loads(raw))
        except ValueError:
            answer = rpc_error(None, PARSE_ERROR, "parse error")
        if answer is not None:
            sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
