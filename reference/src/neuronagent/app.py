"""NeuronAgent's HTTP API: health, metrics, agents, and the WebSocket."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import psycopg
from neuronref import VERSION, httpd, websocket
from neuronref.db import Pool, PoolTimeout, first_line
from neuronref.httpd import Request, Response, error, json_response, route
from neuronref.logs import fields
from neuronref.metrics import CONTENT_TYPE, Metrics
from psycopg import errors as pg_errors

from . import store

MAX_NAME = 200


class AgentApp:
    def __init__(self, pool: Pool, metrics: Metrics, log: logging.Logger, events: bool) -> None:
        self.pool = pool
        self.metrics = metrics
        self.log = log
        self.events = events
        ws = self.handle_ws
        self.router = httpd.Router(
            [
                route("GET", "/health", self.handle_health),
                route("GET", "/metrics", self.handle_metrics),
                route("GET", "/api/v1/agents", self.authenticated(self.handle_list_agents)),
                route("POST", "/api/v1/agents", self.authenticated(self.handle_create_agent)),
                # The 2026-01 build serves its WebSocket at /api/v1/ws, the 2026-03 build at /ws.
                route("GET", "/api/v1/ws", self.authenticated(ws, allow_query_key=True)),
                route("GET", "/ws", self.authenticated(ws, allow_query_key=True)),
            ]
        )
        metrics.gauges.append(self._pool_gauge)

    def _pool_gauge(self) -> list[tuple[str, str, dict[str, str], float]]:
        help_text = "Open database connections of the pool."
        return [("db_open_connections", help_text, {}, float(self.pool.open_count))]

    def site(self) -> httpd.Site:
        return httpd.Site(self.router, self.metrics, self.log, f"neuronagent/{VERSION}")

    # -- failures of the database, as answers

    def db_failure(self, exc: BaseException) -> Response:
        """503 when the database cannot be reached, 500 when it refuses the query (e.g. a missing table)."""
        self.log.error("database request failed", extra=fields(error=first_line(exc)))
        if isinstance(exc, PoolTimeout | psycopg.OperationalError):
            return error(503, "database unavailable")
        return error(500, f"database error: {first_line(exc)}")

    # -- authentication

    def authenticated(self, handler: httpd.Handler, allow_query_key: bool = False) -> httpd.Handler:
        """Wrap handler: a live key of neurondb_agent.api_keys in Authorization: Bearer (or ?api_key=)."""

        def check(request: Request) -> httpd.Answer:
            key = request.bearer()
            if key is None and allow_query_key:
                # Browsers cannot set headers on a WebSocket: the key may come in the query.
                key = request.query_value("api_key")
            if not key:
                return json_response(401, {"error": "missing API key"}, {"WWW-Authenticate": "Bearer"})
            try:
                found = self.pool.run(lambda conn: store.key_id(conn, key))
            except (PoolTimeout, psycopg.Error) as exc:
                return self.db_failure(exc)
            if found is None:
                return json_response(401, {"error": "invalid API key"}, {"WWW-Authenticate": "Bearer"})
            return handler(request)

        return check

    # -- handlers

    def handle_health(self, request: Request) -> Response:
        try:
            self.pool.run(lambda conn: conn.execute("SELECT 1").fetchone())
        except (PoolTimeout, psycopg.Error) as exc:
            self.log.warning("health check failed", extra=fields(error=first_line(exc)))
            return Response(503, b"", None)  # the 2026-01 build answers 503 with no body at all
        return json_response(200, {"status": "ok"})

    def handle_metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render().encode(), CONTENT_TYPE)

    def handle_list_agents(self, request: Request) -> Response:
        try:
            agents = self.pool.run(store.list_agents)
        except (PoolTimeout, psycopg.Error) as exc:
            return self.db_failure(exc)
        return json_response(200, agents)

    def handle_create_agent(self, request: Request) -> Response:
        try:
            document = request.json()
        except ValueError:
            return error(400, "the body must be JSON")
        problem, name, description, embedding = _agent_fields(document)
        if problem:
            return error(400, problem)
        try:
            agent = self.pool.run(lambda conn: store.create_agent(conn, name, description, embedding, self.events))
        except pg_errors.UniqueViolation:
            return error(409, f"an agent named {name!r} exists")
        except (PoolTimeout, psycopg.Error) as exc:
            return self.db_failure(exc)
        return json_response(201, agent, {"Location": f"/api/v1/agents/{agent['id']}"})

    def handle_ws(self, request: Request) -> httpd.Answer:
        return httpd.WebSocketSession(self._echo)

    def _echo(self, ws: websocket.WebSocket) -> None:
        self.metrics.count("websocket_sessions_total", "WebSocket sessions opened.")
        while (message := ws.receive()) is not None:
            if isinstance(message, bytes):
                ws.close(websocket.CLOSE_INVALID_DATA, "text messages only")
                break
            try:
                echoed: Any = json.loads(message)
            except ValueError:
                echoed = message
            ws.send_text(json.dumps({"echo": echoed}))


def _agent_fields(document: Any) -> tuple[str | None, str, str, list[float] | None]:
    """(problem, name, description, embedding) of a POST /api/v1/agents body."""
    if not isinstance(document, dict):
        return "the body must be a JSON object", "", "", None
    name, description, embedding = document.get("name"), document.get("description", ""), document.get("embedding")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= MAX_NAME:
        return f"name must be a string of 1 to {MAX_NAME} characters", "", "", None
    if not isinstance(description, str):
        return "description must be a string", "", "", None
    if embedding is not None:
        numbers = isinstance(embedding, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in embedding
        )
        if not numbers or len(embedding) != 3:
            return "embedding must be a list of 3 finite numbers (the column is vector(3))", "", "", None
    return None, name.strip(), description, embedding
