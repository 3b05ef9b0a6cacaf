"""The NeuronDesktop API's routes."""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
from neuronref import VERSION, httpd, websocket
from neuronref.db import ConnParams, Pool, PoolTimeout, first_line
from neuronref.httpd import Request, Response, error, json_response, route
from neuronref.logs import fields
from neuronref.metrics import CONTENT_TYPE, Metrics

from . import profiles as store
from . import secrets_util
from .config import DesktopConfig
from .mcpchild import ChildUnavailable, McpChild

COOKIE = "neurondesktop_session"
TOKEN_LIFETIME_S = 24 * 3600
AGENT_TIMEOUT_S = 5.0
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
SQL_ROW_LIMIT = 1000


class DesktopApp:
    def __init__(self, config: DesktopConfig, pool: Pool, metrics: Metrics, log: logging.Logger) -> None:
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.log = log
        self.children: dict[str, McpChild] = {}
        self.started = time.time()
        auth = self.authenticated
        self.router = httpd.Router(
            [
                route("GET", "/health", self.handle_health),
                route("GET", "/api/v1/health", self.handle_health),
                route("GET", "/metrics", self.handle_metrics),
                route("GET", "/api/v1/auth/config", self.handle_auth_config),
                route("POST", "/api/v1/auth/login", self.handle_login),
                route("GET", "/api/v1/profiles", auth(self.handle_profiles)),
                route("GET", "/api/v1/profiles/{id}/agent/health", auth(self.handle_agent_health)),
                route("POST", "/api/v1/profiles/{id}/mcp/call", auth(self.handle_mcp_call)),
                route("POST", "/api/v1/profiles/{id}/sql", auth(self.handle_sql)),
                route("GET", "/api/v1/profiles/{id}/agent/ws", auth(self.handle_agent_ws)),
                route("GET", "/api/v1/profiles/{id}/mcp/ws", auth(self.handle_mcp_ws)),
                route("GET", "/api/v1/system-metrics/ws", auth(self.handle_metrics_ws)),
            ]
        )
        metrics.gauges.append(self._children_gauge)

    def site(self) -> httpd.Site:
        server = f"neurondesktop/{VERSION}"
        return httpd.Site(self.router, self.metrics, self.log, server, cors_origins=self.config.cors_allowed_origins)

    def _children_gauge(self) -> list[tuple[str, str, dict[str, str], float]]:
        help_text = "1 when the profile's MCP child is initialized and running."
        return [
            ("mcp_child_up", help_text, {"profile": pid}, float(c.state == "ready")) for pid, c in self.children.items()
        ]

    # -- MCP children

    def start_children(self) -> None:
        for profile in self.pool.run(store.list_profiles):
            if profile.mcp_binary_path:
                self.children[profile.id] = McpChild(profile, self.config.log_level, self.log, self.metrics).start()
            else:
                self.log.warning("profile has no MCP binary path: no MCP child", extra=fields(profile=profile.id))

    def stop_children(self) -> None:
        for child in self.children.values():
            child.stop()

    # -- helpers

    def db_failure(self, exc: BaseException) -> Response:
        self.log.error("database request failed", extra=fields(error=first_line(exc)))
        if isinstance(exc, PoolTimeout | psycopg.OperationalError):
            return error(503, "database unavailable")
        return error(500, "database error")

    def authenticated(self, handler: httpd.Handler) -> httpd.Handler:
        """A valid token of ours: Authorization: Bearer, ?token= (browser WebSockets) or the session cookie."""

        def check(request: Request) -> httpd.Answer:
            if self.config.jwt_secret is None:
                return error(401, "AUTH_MODE=oidc: this reference build signs no one in without OIDC")
            token = request.bearer() or request.query_value("token") or request.cookie(COOKIE)
            claims = secrets_util.jwt_decode(token, self.config.jwt_secret) if token else None
            if claims is None or not isinstance(claims.get("sub"), str) or not isinstance(claims.get("ts"), str):
                return json_response(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            try:
                valid = self.pool.run(lambda conn: store.token_valid(conn, claims["sub"], claims["ts"]))
            except (PoolTimeout, psycopg.Error) as exc:
                return self.db_failure(exc)
            if not valid:
                return json_response(401, {"error": "token revoked"}, {"WWW-Authenticate": "Bearer"})
            return handler(request)

        return check

    def profile(self, request: Request) -> tuple[store.Profile | None, Response | None]:
        profile_id = request.params["id"]
        if not UUID_RE.fullmatch(profile_id):
            return None, error(404, "no such profile")
        try:
            found = self.pool.run(lambda conn: store.get_profile(conn, profile_id))
        except (PoolTimeout, psycopg.Error) as exc:
            return None, self.db_failure(exc)
        return (found, None) if found else (None, error(404, "no such profile"))

    def child(self, profile: store.Profile) -> McpChild | None:
        return self.children.get(profile.id)

    # -- public handlers

    def handle_health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    def handle_metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render().encode(), CONTENT_TYPE)

    def handle_auth_config(self, request: Request) -> Response:
        document = {"mode": self.config.auth_mode, "password_login": self.config.password_login}
        if self.config.oidc_issuer_url:
            document |= {"oidc_issuer_url": self.config.oidc_issuer_url, "oidc_client_id": self.config.oidc_client_id}
        return json_response(200, document)

    def handle_login(self, request: Request) -> Response:
        if not self.config.password_login or self.config.jwt_secret is None:
            return error(403, f"password sign-in is off with AUTH_MODE={self.config.auth_mode}")
        try:
            document = request.json()
        except ValueError:
            return error(400, "the body must be JSON")
        username = document.get("username") if isinstance(document, dict) else None
        password = document.get("password") if isinstance(document, dict) else None
        if not isinstance(username, str) or not isinstance(password, str):
            return error(400, 'send {"username": ..., "password": ...}')
        try:
            user = self.pool.run(lambda conn: store.user_for_login(conn, username))
        except (PoolTimeout, psycopg.Error) as exc:
            return self.db_failure(exc)
        if user is None or not secrets_util.verify_password(password, user[1]):
            self.log.warning("sign-in refused", extra=fields(username=username, remote=request.client))
            return error(401, "invalid credentials")
        now = int(time.time())
        claims = {"sub": user[0], "name": username, "iat": now, "exp": now + TOKEN_LIFETIME_S, "ts": user[2]}
        token = secrets_util.jwt_encode(claims, self.config.jwt_secret)
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={TOKEN_LIFETIME_S}"
        if self.config.session_secure:
            cookie += "; Secure"
        if self.config.session_cookie_domain:
            cookie += f"; Domain={self.config.session_cookie_domain}"
        return json_response(200, {"token": token, "expires_at": claims["exp"]}, {"Set-Cookie": cookie})

    # -- protected handlers

    def handle_profiles(self, request: Request) -> Response:
        try:
            found = self.pool.run(store.list_profiles)
        except (PoolTimeout, psycopg.Error) as exc:
            return self.db_failure(exc)
        documents = []
        for profile in found:
            child = self.child(profile)
            documents.append({**profile.public(), "mcp_state": child.state if child else "none"})
        return json_response(200, documents)

    def handle_agent_health(self, request: Request) -> Response:
        profile, problem = self.profile(request)
        if profile is None:
            return problem or error(404, "no such profile")
        if not profile.agent_endpoint:
            return json_response(502, {"status": "unconfigured", "error": "the profile has no agent endpoint"})
        url = profile.agent_endpoint.rstrip("/") + "/api/v1/agents"
        headers = {"Authorization": f"Bearer {profile.agent_api_key}"} if profile.agent_api_key else {}
        upstream = urllib.request.Request(url, headers=headers)
        # The system trust store, as the real API uses for an https endpoint.
        context = ssl.create_default_context()
        try:
            with urllib.request.urlopen(upstream, timeout=AGENT_TIMEOUT_S, context=context) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as answer:
            status, body = answer.code, answer.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return json_response(
                502, {"status": "unreachable", "endpoint": profile.agent_endpoint, "error": str(reason)}
            )
        document: dict[str, Any] = {"status": "ok" if status == 200 else "error", "agent_status": status}
        document["endpoint"] = profile.agent_endpoint
        if status == 200:
            try:
                agents = json.loads(body)
                document["agents"] = len(agents) if isinstance(agents, list) else None
            except ValueError:
                document["status"] = "error"
        else:
            document["error"] = body.decode("utf-8", "replace")[:500]
        return json_response(200 if document["status"] == "ok" else 502, document)

    def handle_mcp_call(self, request: Request) -> Response:
        profile, problem = self.profile(request)
        if profile is None:
            return problem or error(404, "no such profile")
        try:
            message = request.json()
        except ValueError:
            return error(400, "the body must be JSON")
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return error(400, 'send {"method": ..., "params": ...}')
        child = self.child(profile)
        if child is None:
            return error(503, "the profile has no MCP child (no MCP binary path)")
        try:
            answer = child.call(message["method"], message.get("params"))
        except ChildUnavailable as exc:
            return error(503, str(exc))
        return json_response(200, {**answer, "id": message.get("id", answer.get("id"))})

    def handle_sql(self, request: Request) -> Response:
        if not self.config.enable_sql_console:
            return error(403, "the SQL console is off (ENABLE_SQL_CONSOLE=false)")
        profile, problem = self.profile(request)
        if profile is None:
            return problem or error(404, "no such profile")
        try:
            query = request.json().get("query")
        except (ValueError, AttributeError):
            query = None
        if not isinstance(query, str) or not query.strip():
            return error(400, 'send {"query": "SELECT ..."}')
        params = ConnParams(
            host=profile.neurondb_host or "localhost",
            port=profile.neurondb_port or 5432,
            dbname=profile.neurondb_database or "postgres",
            user=profile.neurondb_user or "postgres",
            password=profile.neurondb_password,
            application_name="neurondesktop-sql",
        )
        try:
            with params.connect() as conn, conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute("SET LOCAL statement_timeout = '5s'")
                # A first query takes the snapshot: from then on the query cannot switch the
                # transaction back to read-write (and one statement per call: extended protocol).
                conn.execute("SELECT 1")
                cursor = conn.execute(query)
                columns = [column.name for column in cursor.description or []]
                rows = cursor.fetchmany(SQL_ROW_LIMIT) if cursor.description else []
        except psycopg.Error as exc:
            return error(400, first_line(exc))
        return json_response(200, {"columns": columns, "rows": rows})

    def handle_agent_ws(self, request: Request) -> httpd.Answer:
        profile, problem = self.profile(request)
        if profile is None:
            return problem or error(404, "no such profile")
        if not profile.agent_endpoint:
            return error(502, "the profile has no agent endpoint")
        endpoint, key = profile.agent_endpoint.rstrip("/"), profile.agent_api_key

        def run(client: websocket.WebSocket) -> None:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            try:
                upstream = websocket.connect(f"{endpoint}/api/v1/ws", headers, timeout=AGENT_TIMEOUT_S)
            except (OSError, websocket.HandshakeError) as exc:
                self.log.warning("cannot open the agent's WebSocket", extra=fields(endpoint=endpoint, error=str(exc)))
                client.close(websocket.CLOSE_INTERNAL_ERROR, "agent WebSocket unavailable")
                return
            websocket.relay(client, upstream)

        return httpd.WebSocketSession(run)

    def handle_mcp_ws(self, request: Request) -> httpd.Answer:
        profile, problem = self.profile(request)
        if profile is None:
            return problem or error(404, "no such profile")
        child = self.child(profile)
        if child is None:
            return error(503, "the profile has no MCP child (no MCP binary path)")

        def run(ws: websocket.WebSocket) -> None:
            while (message := ws.receive()) is not None:
                try:
                    request_message = json.loads(message)
                    answer = child.call(request_message["method"], request_message.get("params"))
                    answer["id"] = request_message.get("id", answer.get("id"))
                except (ValueError, TypeError, KeyError):
                    answer = {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
                except ChildUnavailable as exc:
                    answer = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": str(exc)}}
                ws.send_text(json.dumps(answer))

        return httpd.WebSocketSession(run)

    def handle_metrics_ws(self, request: Request) -> httpd.Answer:
        def run(ws: websocket.WebSocket) -> None:
            ws.send_text(json.dumps(self.system_metrics()))
            while (message := ws.receive()) is not None:
                ws.send_text(json.dumps({"echo": message if isinstance(message, str) else message.hex()}))

        return httpd.WebSocketSession(run)

    def system_metrics(self) -> dict[str, Any]:
        document: dict[str, Any] = {"type": "system_metrics", "time": time.time(), "cpu_count": os.cpu_count()}
        document["uptime_seconds"] = round(time.time() - self.started, 3)
        try:
            document["load_average"] = list(os.getloadavg())
        except OSError:
            document["load_average"] = None
        memory: dict[str, int] = {}
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    memory[f"{name[3:].lower()}_bytes"] = int(rest.split()[0]) * 1024
        except OSError:
            pass
        document["memory"] = memory or None
        return document
