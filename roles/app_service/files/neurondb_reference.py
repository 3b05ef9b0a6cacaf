#!/usr/bin/env python3
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Reference NeuronDB services: small stand-ins for the agent, api, frontend and mcp tiers.

The collection deploys these when a user supplies no artifact of the proprietary
services, so the lab and the tests exercise the same contracts (ports, environment,
health endpoints, metrics, database access through PgBouncer) as production.

Run as ``python3 neurondb_reference.py --kind {agent,api,frontend,mcp}``; the rest of
the configuration comes from the environment, with the names the real services use:

    SERVER_HOST   address to bind (default 0.0.0.0)
    SERVER_PORT   port (default: agent 8080, api 8081, frontend 3000, mcp 8082)
    INSTANCE_NAME name reported in X-NeuronDB-Instance (default: the host name)
    NEURONDB_RELEASE  label of the deployed release, e.g. set by the launcher of a
                  packaged build; reported as "release" in the health documents, in
                  X-NeuronDB-Release and in neurondb_reference_info (unset: not reported)
    LOG_LEVEL     debug, info, warning, error (default info)
    DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, DB_SSLMODE
                  the read-write database (agent, api, mcp)
    DB_READ_HOST, DB_READ_PORT, DB_READ_NAME
                  optional read-only path (e.g. a PgBouncer alias for the replicas)
    JWT_SECRET    api only, required
    NEURONAGENT_ENDPOINT  api only: base URL of the agent tier
    NEURONMCP_HTTP_ENABLED, NEURONMCP_HTTP_ADDR  mcp only: HTTP transport (default
                  true; false speaks JSON-RPC on stdin/stdout) and its host:port,
                  which takes precedence over SERVER_HOST/SERVER_PORT

Endpoints (every answer carries X-NeuronDB-Instance and X-Request-ID, and
X-NeuronDB-Release when NEURONDB_RELEASE is set):

    all       GET /metrics (Prometheus text)
    agent     GET /health (SELECT 1: 200 or 503)
    api       GET /health, GET /api/v1/health (static 200), GET /api/v1/ready
              (SELECT 1), GET /api/v1/agent/health (the agent's /health, passed through)
    agent+api POST /api/v1/probe {"payload": "..."} -> 201 {"id", "instance", ...};
              GET /api/v1/probe/<id>[?replica=1] -> 200 or 404
    frontend  GET / (HTML naming the instance), GET /health (static 200)
    mcp       GET /health (SELECT 1), POST /mcp (JSON-RPC 2.0: initialize, ping,
              tools/list, tools/call sql_ping)

Only the standard library and psycopg 3 (Debian's python3-psycopg) are used.
Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 1 on a runtime failure such
as a port already in use, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

# psycopg is imported by load_psycopg() only for the kinds with a database: the
# frontend runs without it, and configuration errors are reported without waiting
# for its import (half a second).
psycopg: Any = None
pg_errors: Any = None
TransactionStatus: Any = None

VERSION = "1.0.0"
KINDS = ("agent", "api", "frontend", "mcp")
DEFAULT_PORTS = {"agent": 8080, "api": 8081, "frontend": 3000, "mcp": 8082}
DB_KINDS = frozenset({"agent", "api", "mcp"})
PROBE_KINDS = frozenset({"agent", "api"})

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

# Database defaults, used when the matching variable is unset.
DEFAULT_DB_HOST = "localhost"
DEFAULT_DB_PORT = 5432
DEFAULT_DB_NAME = "neurondb"
DEFAULT_DB_USER = "neurondb"
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# libpq treats connect_timeout below 2 as 2; health must answer within about 2 s.
CONNECT_TIMEOUT_S = 2
HEALTH_DEADLINE_S = 2.0
PROBE_DEADLINE_S = 5.0
POOL_SIZE = 8
UPSTREAM_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 1 << 20
# A slow or stalled client must not hold a request thread (and so shutdown) forever.
CLIENT_SOCKET_TIMEOUT_S = 30.0

REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
MAX_BIGINT = (1 << 63) - 1

log = logging.getLogger("neurondb_reference")
T = TypeVar("T")


# --------------------------------------------------------------------------- config


class ConfigError(Exception):
    """Raised for a bad environment or command line; the message names the culprit."""


@dataclass(frozen=True)
class DbTarget:
    """Where one connection pool connects: the read-write or the read-only path."""

    role: str
    host: str
    port: int
    dbname: str
    user: str
    password: str = field(repr=False)
    sslmode: str | None

    def connect_kwargs(self, application_name: str) -> dict[str, Any]:
        """Keyword arguments for psycopg.connect; PG* variables still apply (e.g. PGSSLROOTCERT)."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": application_name,
        }
        # An empty password is left out so libpq can still use ~/.pgpass or PGPASSWORD.
        if self.password:
            kwargs["password"] = self.password
        if self.sslmode:
            kwargs["sslmode"] = self.sslmode
        return kwargs

    def describe(self) -> str:
        """host:port/dbname, safe to log (no credentials)."""
        return f"{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class Config:
    """Everything the service reads from its command line and environment."""

    kind: str
    bind_host: str
    port: int
    instance: str
    log_level: int
    release: str | None = None
    primary: DbTarget | None = None
    read: DbTarget | None = None
    jwt_secret: str | None = field(default=None, repr=False)
    agent_endpoint: str | None = None
    mcp_http: bool = True


def _env(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """A variable's value with surrounding blanks removed; empty counts as unset."""
    value = env.get(name, "").strip()
    return value if value else default


def _parse_port(name: str, raw: str) -> int:
    """A TCP port number from text, or ConfigError naming the variable."""
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a port number (1-65535)")
    return int(raw)


def _env_port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = _env(env, name)
    return default if raw is None else _parse_port(name, raw)


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _env(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _parse_host_port(name: str, raw: str, default_host: str) -> tuple[str, int]:
    """Split host:port, [v6]:port or :port."""
    match = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>[^:]+)", raw)
    if match is None:
        raise ConfigError(f"{name}={raw!r} is not host:port")
    host = match.group("v6") or match.group("host") or default_host
    return host, _parse_port(name, match.group("port"))


def _parse_log_level(raw: str) -> int:
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING}
    levels |= {"error": logging.ERROR, "critical": logging.CRITICAL}
    try:
        return levels[raw.lower()]
    except KeyError:
        raise ConfigError(f"LOG_LEVEL={raw!r} is not one of debug, info, warning, error") from None


def _instance_name(env: Mapping[str, str]) -> str:
    name = _env(env, "INSTANCE_NAME") or socket.gethostname()
    # It goes into a response header: control characters would break the response.
    if not name.isprintable() or len(name) > 200:
        raise ConfigError(f"INSTANCE_NAME={name!r} must be printable and at most 200 characters")
    return name


def _release(env: Mapping[str, str]) -> str | None:
    release = _env(env, "NEURONDB_RELEASE")
    # Like the instance name, it goes into a response header.
    if release is not None and (not release.isprintable() or len(release) > 200):
        raise ConfigError(f"NEURONDB_RELEASE={release!r} must be printable and at most 200 characters")
    return release


def _db_targets(env: Mapping[str, str]) -> tuple[DbTarget, DbTarget | None]:
    """The read-write target and, when DB_READ_HOST is set, the read-only one."""
    sslmode = _env(env, "DB_SSLMODE")
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(f"DB_SSLMODE={sslmode!r} is not one of {', '.join(SSLMODES)}")
    primary = DbTarget(
        role="primary",
        host=_env(env, "DB_HOST", DEFAULT_DB_HOST) or DEFAULT_DB_HOST,
        port=_env_port(env, "DB_PORT", DEFAULT_DB_PORT),
        dbname=_env(env, "DB_NAME", DEFAULT_DB_NAME) or DEFAULT_DB_NAME,
        user=_env(env, "DB_USER", DEFAULT_DB_USER) or DEFAULT_DB_USER,
        # Passwords may legitimately have blanks at either end: do not strip them.
        password=env.get("DB_PASSWORD", ""),
        sslmode=sslmode,
    )
    read_host = _env(env, "DB_READ_HOST")
    if read_host is None:
        return primary, None
    read = DbTarget(
        role="replica",
        host=read_host,
        port=_env_port(env, "DB_READ_PORT", primary.port),
        dbname=_env(env, "DB_READ_NAME", primary.dbname) or primary.dbname,
        user=primary.user,
        password=primary.password,
        sslmode=sslmode,
    )
    return primary, read


def _agent_endpoint(env: Mapping[str, str]) -> str | None:
    endpoint = _env(env, "NEURONAGENT_ENDPOINT")
    if endpoint is None:
        return None
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"NEURONAGENT_ENDPOINT={endpoint!r} is not an http(s) URL")
    return endpoint.rstrip("/")


def load_config(kind: str, env: Mapping[str, str]) -> Config:
    """Build the configuration of one kind from environment variables."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    bind_host = _env(env, "SERVER_HOST", "0.0.0.0") or "0.0.0.0"
    port = _env_port(env, "SERVER_PORT", DEFAULT_PORTS[kind])
    config: dict[str, Any] = {
        "kind": kind,
        "bind_host": bind_host,
        "port": port,
        "instance": _instance_name(env),
        "log_level": _parse_log_level(_env(env, "LOG_LEVEL", "info") or "info"),
        "release": _release(env),
    }
    if kind in DB_KINDS:
        config["primary"], config["read"] = _db_targets(env)
    if kind == "api":
        # Kept unstripped: a secret is compared byte for byte.
        secret = env.get("JWT_SECRET", "")
        if not secret.strip():
            raise ConfigError("JWT_SECRET is required for --kind api (it signs and checks API tokens)")
        config["jwt_secret"] = secret
        config["agent_endpoint"] = _agent_endpoint(env)
    if kind == "mcp":
        config["mcp_http"] = _env_bool(env, "NEURONMCP_HTTP_ENABLED", True)
        addr = _env(env, "NEURONMCP_HTTP_ADDR")
        if addr is not None:
            config["bind_host"], config["port"] = _parse_host_port("NEURONMCP_HTTP_ADDR", addr, bind_host)
    return Config(**config)


# --------------------------------------------------------------------------- database


class DbUnavailable(Exception):
    """The database could not answer in time; maps to HTTP 503."""


class StaleConnection(Exception):
    """A pooled connection was found dead before any of the work was sent.

    Repeating the work on a new connection is then safe even for a write.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


Work = Callable[[Any], T]


class ConnectionPool:
    """A few reusable connections to one target, safe to share between request threads.

    psycopg_pool is a separate Debian package (python3-psycopg-pool), so this keeps
    the service to python3-psycopg alone. Each unit of work runs in one short
    transaction that the pool opens and commits, on a connection in autocommit mode,
    so no state outlives it: PgBouncer's transaction pooling requires exactly that.
    """

    def __init__(self, target: DbTarget, application_name: str, size: int = POOL_SIZE) -> None:
        self.target = target
        self._kwargs = target.connect_kwargs(application_name)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(size)

    def run(self, work: Work[T], *, deadline: float, idempotent: bool) -> T:
        """work(cursor) in one transaction, answered within deadline seconds or DbUnavailable.

        The work runs in a helper thread because neither libpq nor PgBouncer bounds
        every wait (PgBouncer queues a client up to query_wait_timeout when it has no
        server connection); the request thread gives up at the deadline and the
        helper returns its slot whenever the database finally answers. The slots
        bound the helpers, so a hung database cannot pile up threads.
        """
        give_up = time.monotonic() + deadline
        if not self._slots.acquire(timeout=deadline):
            raise DbUnavailable(f"all {self.target.role} database connections are busy")
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def helper() -> None:
            try:
                outcome["result"] = self._run_with_retry(work, deadline, idempotent)
            except BaseException as exc:  # handed over to the request thread below
                outcome["error"] = exc
            finally:
                self._slots.release()
                done.set()

        threading.Thread(target=helper, name=f"db-{self.target.role}", daemon=True).start()
        if not done.wait(max(give_up - time.monotonic(), 0.0)):
            raise DbUnavailable(f"{self.target.role} database did not answer within {deadline:g} s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def _run_with_retry(self, work: Work[T], deadline: float, idempotent: bool) -> T:
        """Run the work; once more on a new connection when a pooled one turned out dead.

        After a failover or a PgBouncer restart the idle connections are dead and only
        their next use tells: retrying keeps that from looking like an outage. A
        write is repeated only when it never reached the server (StaleConnection).
        """
        conn, reused = self._checkout()
        try:
            return self._attempt(conn, work, deadline)
        except StaleConnection as stale:
            if not reused:
                raise stale.cause from None
        except psycopg.OperationalError:
            # A statement timeout (QueryCanceled) is an OperationalError on a live
            # connection: only a broken one is worth another try.
            if not (reused and idempotent and conn.broken):
                raise
        log.info("a pooled %s connection was dead, retrying on a new one", self.target.role)
        try:
            return self._attempt(self._connect(), work, deadline)
        except StaleConnection as stale:
            raise stale.cause from None

    def _attempt(self, conn: Any, work: Work[T], deadline: float) -> T:
        try:
            return _in_transaction(conn, work, deadline)
        finally:
            self._checkin(conn)

    def _checkout(self) -> tuple[Any, bool]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn, True
        return self._connect(), False

    def _connect(self) -> Any:
        # autocommit: only the transaction _in_transaction opens exists, never an implicit one.
        return psycopg.connect(**self._kwargs, autocommit=True)

    def _checkin(self, conn: Any) -> None:
        """Keep a healthy idle connection for reuse, drop anything else."""
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        if not healthy:
            _close_quietly(conn)
            return
        with self._lock:
            self._idle.append(conn)

    def close(self) -> None:
        """Close idle connections (at shutdown)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            _close_quietly(conn)


def _in_transaction(conn: Any, work: Work[T], deadline: float) -> T:
    """BEGIN, a transaction-local statement_timeout, the work, COMMIT.

    set_config(..., true) is SET LOCAL: it ends with the transaction, so no session
    state is left on a PgBouncer server connection for its next client. BEGIN and
    COMMIT are never prepared: they gain nothing from it.
    """
    with conn.cursor() as cur:
        try:
            cur.execute("BEGIN", prepare=False)
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(int(deadline * 1000)),))
        except psycopg.OperationalError as exc:
            if conn.broken:
                raise StaleConnection(exc) from exc
            raise
        try:
            result = work(cur)
            cur.execute("COMMIT", prepare=False)
        except BaseException:
            _rollback_quietly(conn)
            raise
    return result


def _rollback_quietly(conn: Any) -> None:
    """End a failed transaction so the connection can be reused; a broken one is dropped later."""
    if conn.broken or conn.closed:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        log.debug("rollback failed", exc_info=True)


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # already broken: nothing more to release
        log.debug("closing a connection failed", exc_info=True)


CREATE_PROBE_TABLE = """
CREATE TABLE IF NOT EXISTS neurondb_probe (
    id bigserial PRIMARY KEY,
    payload text,
    instance text,
    created_at timestamptz DEFAULT now()
)"""


def select_one(cur: Any) -> None:
    """SELECT 1; raises on any failure or an unexpected answer."""
    cur.execute("SELECT 1")
    row = cur.fetchone()
    if row is None or row[0] != 1:
        raise RuntimeError(f"SELECT 1 returned {row!r}")


def create_probe_table(cur: Any) -> None:
    cur.execute(CREATE_PROBE_TABLE)


def insert_probe(payload: str, instance: str) -> Work[tuple[int, Any]]:
    """Work inserting one probe row; it returns (id, created_at)."""

    def work(cur: Any) -> tuple[int, Any]:
        cur.execute(
            "INSERT INTO neurondb_probe (payload, instance) VALUES (%s, %s) RETURNING id, created_at",
            (payload, instance),
        )
        row = cur.fetchone()
        return int(row[0]), row[1]

    return work


def select_probe(probe_id: int) -> Work[dict[str, Any] | None]:
    """Work reading one probe row (None when absent), with the server's recovery state."""

    def work(cur: Any) -> dict[str, Any] | None:
        cur.execute(
            "SELECT id, payload, instance, created_at, pg_is_in_recovery() FROM neurondb_probe WHERE id = %s",
            (probe_id,),
        )
        row = cur.fetchone()
        if row is None:
            return None
        return {
            "id": int(row[0]),
            "payload": row[1],
            "instance": row[2],
            "created_at": row[3].isoformat() if row[3] is not None else None,
            "in_recovery": bool(row[4]),
        }

    return work


def db_error_text(exc: BaseException) -> str:
    """One line describing a database failure, for responses and logs."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- metrics


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{key}="{_escape_label(value)}"' for key, value in pairs.items()) + "}"


class Metrics:
    """Prometheus counters, a latency histogram and gauges, rendered in text format 0.0.4."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self, kind: str, instance: str, release: str | None = None) -> None:
        self._base = {"kind": kind, "instance": instance}
        self._info = {**self._base, "version": VERSION} | ({"release": release} if release else {})
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._errors: dict[tuple[str, str, str], int] = {}
        # (method, path) -> bucket counts followed by [sum, count]
        self._durations: dict[tuple[str, str], list[float]] = {}
        self._db_up: dict[str, int] = {}
        self.start_time = time.time()

    def observe(self, method: str, path: str, status: int, seconds: float) -> None:
        """Count one finished request; path is the route template, never the raw path."""
        key = (method, path, str(status))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            if status >= 500:
                self._errors[key] = self._errors.get(key, 0) + 1
            slots = self._durations.setdefault((method, path), [0.0] * (len(self.BUCKETS) + 2))
            for index, bound in enumerate(self.BUCKETS):
                if seconds <= bound:
                    slots[index] += 1
            slots[-2] += seconds
            slots[-1] += 1

    def set_db_up(self, target: str, up: bool) -> None:
        with self._lock:
            self._db_up[target] = 1 if up else 0

    def render(self) -> str:
        """The exposition text."""
        with self._lock:
            requests, errors = dict(self._requests), dict(self._errors)
            durations = {key: list(slots) for key, slots in self._durations.items()}
            db_up = dict(self._db_up)
        lines: list[str] = []
        self._render_counter(lines, "neurondb_http_requests_total", "HTTP requests served.", requests)
        self._render_counter(lines, "neurondb_http_request_errors_total", "HTTP requests answered 5xx.", errors)
        self._render_histogram(lines, durations)
        if db_up:
            lines += ["# HELP neurondb_db_up 1 when SELECT 1 on the database worked.", "# TYPE neurondb_db_up gauge"]
            for target, value in sorted(db_up.items()):
                lines.append(f"neurondb_db_up{_labels({**self._base, 'target': target})} {value}")
        lines += [
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.start_time:.3f}",
            "# HELP neurondb_reference_info The reference service that answers, always 1.",
            "# TYPE neurondb_reference_info gauge",
            f"neurondb_reference_info{_labels(self._info)} 1",
        ]
        return "\n".join(lines) + "\n"

    def _render_counter(self, lines: list[str], name: str, help_text: str, data: dict[tuple[str, ...], int]) -> None:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
        for (method, path, status), value in sorted(data.items()):
            labels = _labels({**self._base, "method": method, "path": path, "status": status})
            lines.append(f"{name}{labels} {value}")

    def _render_histogram(self, lines: list[str], durations: dict[tuple[str, str], list[float]]) -> None:
        name = "neurondb_http_request_duration_seconds"
        lines += [f"# HELP {name} Time to answer HTTP requests.", f"# TYPE {name} histogram"]
        for (method, path), slots in sorted(durations.items()):
            base = {**self._base, "method": method, "path": path}
            for index, bound in enumerate(self.BUCKETS):
                lines.append(f"{name}_bucket{_labels({**base, 'le': f'{bound:g}'})} {int(slots[index])}")
            lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {int(slots[-1])}")
            lines.append(f"{name}_sum{_labels(base)} {slots[-2]:.6f}")
            lines.append(f"{name}_count{_labels(base)} {int(slots[-1])}")


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass
class Request:
    """What a route handler gets: the parsed request and its id."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    request_id: str
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body.decode("utf-8"))

    def flag(self, name: str) -> bool:
        """True for ?name=1 / true / yes."""
        return self.query.get(name, [""])[-1].lower() in ("1", "true", "yes")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, document: Any, headers: dict[str, str] | None = None) -> Response:
    body = (json.dumps(document, separators=(",", ":"), default=str) + "\n").encode()
    return Response(status, body, "application/json", headers or {})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    pattern: re.Pattern[str]


def route(method: str, template: str, handler: Handler) -> Route:
    """A route; {name} in the template matches a decimal id and becomes params[name]."""
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[0-9]{1,19})", re.escape(template))
    return Route(method, template, handler, re.compile(regex))


class Router:
    """Maps (method, path) to a route; the template doubles as the metrics path label."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes = routes

    def match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], str, list[str]]:
        """(route, params, metrics label, allowed methods).

        allowed is non-empty when the path exists but not for this method; the label
        is then that path's template, and "unmatched" for unknown paths, so random
        URLs cannot blow up the metrics' cardinality.
        """
        allowed: list[str] = []
        label = "unmatched"
        for candidate in self._routes:
            found = candidate.pattern.fullmatch(path)
            if found is None:
                continue
            if candidate.method == method:
                return candidate, found.groupdict(), candidate.template, []
            allowed.append(candidate.method)
            label = candidate.template
        return None, {}, label, allowed


def pick_request_id(incoming: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a new one."""
    if incoming and REQUEST_ID_RE.fullmatch(incoming.strip()):
        return incoming.strip()
    return uuid.uuid4().hex


# --------------------------------------------------------------------------- the application


class App:
    """The routes of one kind and the state they share (pools, metrics)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics(config.kind, config.instance, config.release)
        application_name = f"neurondb-{config.kind}-reference"
        self.primary = ConnectionPool(config.primary, application_name) if config.primary else None
        self.read = ConnectionPool(config.read, application_name) if config.read else None
        self.mcp = McpHandler(self)
        self.router = Router(self._routes())

    def _routes(self) -> list[Route]:
        kind = self.config.kind
        routes = [route("GET", "/metrics", self.handle_metrics)]
        if kind == "agent":
            routes.append(route("GET", "/health", self.handle_db_health))
        elif kind == "api":
            # The real API answers health without touching the database; readiness does.
            routes += [
                route("GET", "/health", self.handle_static_health),
                route("GET", "/api/v1/health", self.handle_static_health),
                route("GET", "/api/v1/ready", self.handle_db_health),
                route("GET", "/api/v1/agent/health", self.handle_agent_health),
            ]
        elif kind == "frontend":
            routes += [route("GET", "/", self.handle_index), route("GET", "/health", self.handle_static_health)]
        elif kind == "mcp":
            routes += [route("GET", "/health", self.handle_db_health), route("POST", "/mcp", self.handle_mcp)]
        if kind in PROBE_KINDS:
            routes += [
                route("POST", "/api/v1/probe", self.handle_probe_write),
                route("GET", "/api/v1/probe/{id}", self.handle_probe_read),
            ]
        return routes

    def close(self) -> None:
        for pool in (self.primary, self.read):
            if pool is not None:
                pool.close()

    # -- database helpers

    def check_db(self, pool: ConnectionPool) -> tuple[bool, float, str | None]:
        """(up, latency in ms, error) of SELECT 1 through pool; updates neurondb_db_up."""
        started = time.monotonic()
        try:
            pool.run(select_one, deadline=HEALTH_DEADLINE_S, idempotent=True)
        except (DbUnavailable, psycopg.Error, RuntimeError) as exc:
            error: str | None = db_error_text(exc)
        else:
            error = None
        self.metrics.set_db_up(pool.target.role, error is None)
        return error is None, round((time.monotonic() - started) * 1000, 2), error

    def _identity(self) -> dict[str, str]:
        identity = {"kind": self.config.kind, "instance": self.config.instance, "version": VERSION}
        if self.config.release:
            identity["release"] = self.config.release
        return identity

    # -- handlers

    def handle_static_health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok", **self._identity()})

    def handle_db_health(self, request: Request) -> Response:
        assert self.primary is not None
        up, latency_ms, error = self.check_db(self.primary)
        document: dict[str, Any] = {"status": "ok" if up else "error", **self._identity()}
        document["database"] = {"status": "up" if up else "down", "latency_ms": latency_ms}
        if error:
            document["error"] = error
        return json_response(200 if up else 503, document)

    def handle_metrics(self, request: Request) -> Response:
        # Probe on scrape so neurondb_db_up is current even without traffic.
        for pool in (self.primary, self.read):
            if pool is not None:
                self.check_db(pool)
        body = self.metrics.render().encode()
        return Response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def handle_index(self, request: Request) -> Response:
        name = html.escape(self.config.instance)
        page = (
            '<!doctype html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f"<title>NeuronDB - {name}</title></head>\n<body>\n<h1>NeuronDB</h1>\n"
            f'<p>Reference frontend served by instance <strong id="instance">{name}</strong>.</p>\n'
            f"<p>Request <code>{html.escape(request.request_id)}</code>, version {VERSION}.</p>\n</body>\n</html>\n"
        )
        return Response(200, page.encode(), "text/html; charset=utf-8")

    def handle_probe_write(self, request: Request) -> Response:
        assert self.primary is not None
        try:
            document = request.json()
        except ValueError:
            return json_response(400, {"error": 'body must be JSON: {"payload": "..."}'})
        payload = document.get("payload") if isinstance(document, dict) else None
        if not isinstance(payload, str):
            return json_response(400, {"error": "payload must be a string"})
        try:
            probe_id, created_at = self._write_probe(payload)
        except (DbUnavailable, psycopg.Error) as exc:
            return self._db_failure(request, exc)
        document = {"id": probe_id, "instance": self.config.instance, "created_at": created_at.isoformat()}
        return json_response(201, document, {"Location": f"/api/v1/probe/{probe_id}"})

    def _write_probe(self, payload: str) -> tuple[int, Any]:
        """Insert a probe row, creating the table at first use."""
        assert self.primary is not None
        insert = insert_probe(payload, self.config.instance)
        # Not idempotent: after a connection error the row may have been committed,
        # and a 503 at the deadline may be followed by the commit (as with any client).
        try:
            return self.primary.run(insert, deadline=PROBE_DEADLINE_S, idempotent=False)
        except pg_errors.UndefinedTable:
            pass
        try:
            self.primary.run(create_probe_table, deadline=PROBE_DEADLINE_S, idempotent=True)
        except (pg_errors.UniqueViolation, pg_errors.DuplicateTable, pg_errors.DuplicateObject):
            # Two sessions running CREATE TABLE IF NOT EXISTS at once can both pass
            # the existence check; the loser fails on a catalog unique index.
            log.debug("neurondb_probe was created concurrently")
        return self.primary.run(insert, deadline=PROBE_DEADLINE_S, idempotent=False)

    def handle_probe_read(self, request: Request) -> Response:
        probe_id = int(request.params["id"])
        # Ids beyond bigint cannot exist; the database would reject the parameter.
        if probe_id > MAX_BIGINT:
            return json_response(404, {"error": "probe not found", "id": request.params["id"]})
        pool = self.read if request.flag("replica") and self.read is not None else self.primary
        assert pool is not None
        try:
            row = pool.run(select_probe(probe_id), deadline=PROBE_DEADLINE_S, idempotent=True)
        except pg_errors.UndefinedTable:
            row = None  # no probe was ever written
        except (DbUnavailable, psycopg.Error) as exc:
            return self._db_failure(request, exc)
        if row is None:
            return json_response(404, {"error": "probe not found", "id": probe_id, "source": pool.target.role})
        return json_response(200, {**row, "source": pool.target.role, "served_by": self.config.instance})

    def _db_failure(self, request: Request, exc: BaseException) -> Response:
        # Connection trouble, timeouts and a read-only (demoted) primary are outages
        # of the database tier; anything else the database refuses is our error.
        unavailable = isinstance(exc, DbUnavailable | psycopg.OperationalError | pg_errors.ReadOnlySqlTransaction)
        log.warning("request_id=%s database request failed: %s", request.request_id, db_error_text(exc))
        return json_response(503 if unavailable else 500, {"error": db_error_text(exc)})

    def handle_agent_health(self, request: Request) -> Response:
        """The agent tier's /health, passed through with its status and body."""
        endpoint = self.config.agent_endpoint
        if endpoint is None:
            return json_response(503, {"status": "error", "error": "NEURONAGENT_ENDPOINT is not set"})
        upstream = urllib.request.Request(f"{endpoint}/health", headers={"X-Request-ID": request.request_id})
        try:
            with urllib.request.urlopen(upstream, timeout=UPSTREAM_TIMEOUT_S) as answer:
                return self._passthrough(answer.status, answer.headers, answer.read())
        except urllib.error.HTTPError as answer:
            return self._passthrough(answer.code, answer.headers, answer.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            status = 504 if isinstance(reason, TimeoutError | socket.timeout) else 502
            return json_response(status, {"status": "error", "error": f"agent at {endpoint}: {reason}"})

    @staticmethod
    def _passthrough(status: int, headers: Any, body: bytes) -> Response:
        extra = {}
        if headers.get("X-NeuronDB-Instance"):
            extra["X-NeuronDB-Upstream-Instance"] = headers["X-NeuronDB-Instance"]
        return Response(status, body, headers.get("Content-Type", "application/json"), extra)

    def handle_mcp(self, request: Request) -> Response:
        try:
            payload = request.json()
        except ValueError:
            return json_response(400, jsonrpc_error(None, -32700, "parse error"))
        answer = self.mcp.handle(payload)
        if answer is None:  # only notifications: nothing to answer
            return Response(202)
        status = 400 if isinstance(answer, dict) and answer.get("error", {}).get("code") == -32600 else 200
        return json_response(status, answer)


# --------------------------------------------------------------------------- MCP


def jsonrpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class McpHandler:
    """A minimal JSON-RPC 2.0 MCP server: initialize, ping, tools/list, tools/call sql_ping."""

    PROTOCOL_VERSION = "2025-03-26"
    TOOLS = [
        {
            "name": "sql_ping",
            "description": "Run SELECT 1 on the NeuronDB database and report the latency.",
            "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
        }
    ]

    def __init__(self, app: App) -> None:
        self.app = app

    def handle(self, payload: Any) -> Any:
        """The answer to a message or a batch; None when nothing needs answering."""
        if isinstance(payload, list):
            if not payload:
                return jsonrpc_error(None, -32600, "empty batch")
            answers = [answer for answer in map(self._handle_one, payload) if answer is not None]
            return answers or None
        return self._handle_one(payload)

    def _handle_one(self, message: Any) -> dict[str, Any] | None:
        if (
            not isinstance(message, dict)
            or message.get("jsonrpc") != "2.0"
            or not isinstance(message.get("method"), str)
        ):
            return jsonrpc_error(message.get("id") if isinstance(message, dict) else None, -32600, "invalid request")
        if "id" not in message:  # a notification (e.g. notifications/initialized)
            return None
        request_id, method = message["id"], message["method"]
        params = message.get("params") or {}
        if method == "initialize":
            return self._result(request_id, self._initialize(params))
        if method == "ping":
            return self._result(request_id, {})
        if method == "tools/list":
            return self._result(request_id, {"tools": self.TOOLS})
        if method == "tools/call":
            name = params.get("name") if isinstance(params, dict) else None
            if name != "sql_ping":
                return jsonrpc_error(request_id, -32602, f"unknown tool: {name!r}")
            return self._result(request_id, self._sql_ping())
        return jsonrpc_error(request_id, -32601, f"method not found: {method}")

    @staticmethod
    def _result(request_id: Any, result: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _initialize(self, params: Any) -> dict[str, Any]:
        requested = params.get("protocolVersion") if isinstance(params, dict) else None
        return {
            "protocolVersion": requested if isinstance(requested, str) else self.PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "neurondb-mcp-reference", "version": VERSION},
        }

    def _sql_ping(self) -> dict[str, Any]:
        assert self.app.primary is not None
        up, latency_ms, error = self.app.check_db(self.app.primary)
        text = f"SELECT 1 ok in {latency_ms} ms" if up else f"SELECT 1 failed: {error}"
        return {"content": [{"type": "text", "text": text}], "isError": not up}


# --------------------------------------------------------------------------- server


class RequestHandler(BaseHTTPRequestHandler):
    """Dispatches to the App's routes; adds the instance and request id headers to every answer."""

    server_version = f"NeuronDBReference/{VERSION}"
    sys_version = ""
    timeout = CLIENT_SOCKET_TIMEOUT_S
    server: ReferenceHTTPServer
    request_id: str | None = None
    _identity_sent = False

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def end_headers(self) -> None:
        # Also reached by http.server's own error replies (bad request line, 501...).
        if not self._identity_sent:
            self._identity_sent = True
            self.send_header("X-NeuronDB-Instance", self.server.app.config.instance)
            if self.server.app.config.release:
                self.send_header("X-NeuronDB-Release", self.server.app.config.release)
            self.send_header("X-Request-ID", self._request_id())
        super().end_headers()

    def _request_id(self) -> str:
        """Set by _dispatch; for http.server's own replies, from the headers when parsed."""
        if self.request_id is None:
            headers = getattr(self, "headers", None)
            self.request_id = pick_request_id(headers.get("X-Request-ID") if headers is not None else None)
        return self.request_id

    def version_string(self) -> str:
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: _dispatch logs its own line per request, with the request id."""

    def log_message(self, format: str, *args: Any) -> None:
        # Reached through log_error only: requests http.server rejects itself (501, 400).
        log.info("client=%s %s", self.client_address[0], format % args)

    def _dispatch(self) -> None:
        started = time.monotonic()
        app = self.server.app
        self.request_id = pick_request_id(self.headers.get("X-Request-ID"))
        path = urllib.parse.urlsplit(self.path).path or "/"
        found, params, label, allowed = app.router.match(self.command, path)
        response = self._respond(found, params, allowed, path)
        self._send(response)
        seconds = time.monotonic() - started
        method = self.command if self.command in HTTP_METHODS else "OTHER"
        app.metrics.observe(method, label, response.status, seconds)
        level = logging.WARNING if response.status >= 500 else logging.INFO
        log.log(
            level,
            "request_id=%s method=%s path=%s route=%s status=%d duration_ms=%.1f client=%s",
            self.request_id,
            self.command,
            self.path,
            label,
            response.status,
            seconds * 1000,
            self.client_address[0],
        )

    def _respond(self, found: Route | None, params: dict[str, str], allowed: list[str], path: str) -> Response:
        body, problem = self._read_body()
        if problem is not None:
            return problem
        if found is None:
            if allowed:
                return json_response(405, {"error": "method not allowed"}, {"Allow": ", ".join(sorted(allowed))})
            return json_response(404, {"error": "not found", "path": path})
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        request = Request(self.command, path, query, self.headers, body, self.request_id, params)
        try:
            return found.handler(request)
        except Exception:
            log.exception("request_id=%s unhandled error", self.request_id)
            return json_response(500, {"error": "internal error", "request_id": self.request_id})

    def _read_body(self) -> tuple[bytes, Response | None]:
        """The request body; read whole even when unused, so closing never resets the client."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b"", None
        if not raw.strip().isdigit():
            return b"", json_response(400, {"error": "bad Content-Length"})
        length = int(raw)
        if length > MAX_BODY_BYTES:
            return b"", json_response(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
        try:
            return self.rfile.read(length), None
        except (TimeoutError, ConnectionError):
            return b"", json_response(408, {"error": "the request body did not arrive"})

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            log.info("request_id=%s client went away: %s", self.request_id, exc)


class ReferenceHTTPServer(ThreadingHTTPServer):
    """One thread per request; close() waits for in-flight requests (graceful stop)."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: App) -> None:
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the bind address with getfqdn, a reverse DNS
        # lookup that can stall start-up for seconds; the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def notify_systemd(state: str) -> None:
    """sd_notify for Type=notify units; a no-op elsewhere."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)


def serve_http(app: App) -> int:
    """Serve until SIGTERM/SIGINT, then finish in-flight requests and return the exit code."""
    config = app.config
    try:
        server = ReferenceHTTPServer((config.bind_host, config.port), app)
    except OSError as exc:
        print(f"neurondb_reference: cannot listen on {config.bind_host}:{config.port}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, finishing in-flight requests", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # serve_forever runs in a thread: shutdown() called from the signal handler in the
    # serving thread itself would deadlock.
    accept = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-accept")
    accept.start()
    log.info(
        "listening kind=%s instance=%s address=%s:%d %s",
        config.kind,
        config.instance,
        *server.server_address[:2],
        _describe_db(config),
    )
    notify_systemd("READY=1")
    while not stop.wait(1.0):
        pass
    notify_systemd("STOPPING=1")
    server.shutdown()
    server.server_close()  # joins the request threads: in-flight requests complete
    accept.join()
    app.close()
    log.info("stopped")
    return EXIT_OK


def _describe_db(config: Config) -> str:
    parts = []
    if config.primary:
        parts.append(f"db={config.primary.describe()}")
    if config.read:
        parts.append(f"read_db={config.read.describe()}")
    return " ".join(parts)


def serve_stdio(app: App) -> int:
    """MCP over stdio (NEURONMCP_HTTP_ENABLED=false): one JSON-RPC message per line."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_OK))
    log.info("serving MCP on stdio instance=%s %s", app.config.instance, _describe_db(app.config))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = app.mcp.handle(json.loads(line))
        except ValueError:
            answer = jsonrpc_error(None, -32700, "parse error")
        if answer is not None:
            sys.stdout.write(json.dumps(answer, separators=(",", ":")) + "\n")
            sys.stdout.flush()
    app.close()
    return EXIT_OK


def load_psycopg() -> bool:
    """Import psycopg into the module globals; False when it is not installed."""
    global psycopg, pg_errors, TransactionStatus
    try:
        import psycopg as module
        from psycopg import errors
        from psycopg.pq import TransactionStatus as status
    except ImportError:
        return False
    psycopg, pg_errors, TransactionStatus = module, errors, status
    return True


def configure_logging(config: Config, stream: Any) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s neurondb-{config.kind} %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(config.log_level)
    log.propagate = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="NeuronDB reference service (configuration from the environment).")
    parser.add_argument("--kind", required=True, choices=KINDS, help="which tier to stand in for")
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        config = load_config(args.kind, os.environ if env is None else env)
    except ConfigError as exc:
        print(f"neurondb_reference: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if config.kind in DB_KINDS and not load_psycopg():
        print(f"neurondb_reference: --kind {config.kind} needs psycopg 3 (Debian: python3-psycopg)", file=sys.stderr)
        return EXIT_CONFIG
    stdio = config.kind == "mcp" and not config.mcp_http
    # On stdio, stdout carries the protocol: logs go to stderr.
    configure_logging(config, sys.stderr if stdio else sys.stdout)
    app = App(config)
    return serve_stdio(app) if stdio else serve_http(app)


if __name__ == "__main__":
    sys.exit(main())
