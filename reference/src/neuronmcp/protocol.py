"""The MCP methods over JSON-RPC 2.0: initialize, ping, tools/list, tools/call (sql_ping)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg
from neuronref import VERSION
from neuronref.db import ConnParams, first_line
from neuronref.logs import fields

PROTOCOL_VERSION = "2025-03-26"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
TOOLS = [
    {
        "name": "sql_ping",
        "description": "Run SELECT 1 on the NeuronDB database and report the round trip.",
        "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
    }
]


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class Database:
    """One connection, opened on first use and again after it breaks (tool calls are rare)."""

    def __init__(self, params: ConnParams, log: logging.Logger) -> None:
        self.params = params
        self.log = log
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    def ping(self) -> tuple[bool, str]:
        started = time.monotonic()
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self.params.connect()
                row = self._conn.execute("SELECT 1").fetchone()
            except psycopg.Error as exc:
                self.log.warning("sql_ping failed", extra=fields(error=first_line(exc), db=self.params.describe()))
                return False, f"SELECT 1 failed: {first_line(exc)}"
        elapsed = (time.monotonic() - started) * 1000
        return row == (1,), f"SELECT 1 returned {row[0] if row else None} in {elapsed:.1f} ms"

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class Protocol:
    def __init__(self, db: Database) -> None:
        self.db = db

    def handle(self, payload: Any) -> Any:
        """The answer to one message or a batch; None when nothing is to be answered (notifications)."""
        if isinstance(payload, list):
            if not payload:
                return rpc_error(None, INVALID_REQUEST, "empty batch")
            answers = [answer for answer in map(self._one, payload) if answer is not None]
            return answers or None
        return self._one(payload)

    def _one(self, message: Any) -> dict[str, Any] | None:
        if (
            not isinstance(message, dict)
            or message.get("jsonrpc") != "2.0"
            or not isinstance(message.get("method"), str)
        ):
            return rpc_error(
                message.get("id") if isinstance(message, dict) else None, INVALID_REQUEST, "invalid request"
            )
        if "id" not in message:
            return None  # a notification, e.g. notifications/initialized
        request_id, method, params = message["id"], message["method"], message.get("params") or {}
        if method == "initialize":
            requested = params.get("protocolVersion") if isinstance(params, dict) else None
            return self._result(
                request_id,
                {
                    "protocolVersion": requested if isinstance(requested, str) else PROTOCOL_VERSION,
                    "capabilities": {"tools": {"listChanged": False}},
                    "serverInfo": {"name": "neurondb-mcp", "version": f"{VERSION}-reference"},
                },
            )
        if method == "ping":
            return self._result(request_id, {})
        if method == "tools/list":
            return self._result(request_id, {"tools": TOOLS})
        if method == "tools/call":
            name = params.get("name") if isinstance(params, dict) else None
            if name != "sql_ping":
                return rpc_error(request_id, INVALID_PARAMS, f"unknown tool: {name!r}")
            ok, text = self.db.ping()
            return self._result(request_id, {"content": [{"type": "text", "text": text}], "isError": not ok})
        return rpc_error(request_id, METHOD_NOT_FOUND, f"method not found: {method}")

    @staticmethod
    def _result(request_id: Any, result: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "result": result}
