"""PostgreSQL access with psycopg 3 (Debian's python3-psycopg): connection settings and a small pool.

psycopg_pool is a separate Debian package; this pool keeps the services to
python3-psycopg alone. Connections are in autocommit mode, so nothing stays open
between units of work unless the work opens a transaction itself.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

T = TypeVar("T")
CONNECT_TIMEOUT_S = 3


@dataclass(frozen=True)
class ConnParams:
    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    sslmode: str | None = None
    options: str | None = None  # libpq "options": -c settings sent at connection start
    application_name: str = ""
    conninfo: str | None = field(default=None, repr=False)  # a full connection string wins over the fields

    def kwargs(self) -> dict[str, Any]:
        if self.conninfo is not None:
            extra = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": self.application_name}
            return {"conninfo": self.conninfo, **extra}
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": self.user,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": self.application_name,
        }
        # No password: libpq may still find one in PGPASSWORD or ~/.pgpass.
        if self.password is not None:
            values["password"] = self.password
        if self.sslmode is not None:
            values["sslmode"] = self.sslmode
        if self.options is not None:
            values["options"] = self.options
        return values

    def describe(self) -> str:
        """Where it connects, without credentials (for logs)."""
        if self.conninfo is not None:
            return "NEURONDB_CONNECTION_STRING"
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def connect(self, **overrides: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(**{**self.kwargs(), **overrides}, autocommit=True)


class PoolTimeout(Exception):
    """Every allowed connection was busy for too long."""


def first_line(exc: BaseException) -> str:
    """One line describing a database failure, for answers and logs (no connection string in it)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Pool:
    """At most max_open connections (DB_MAX_OPEN_CONNS), up to max_idle kept for reuse."""

    def __init__(
        self,
        params: ConnParams,
        max_open: int,
        max_idle: int | None = None,
        max_lifetime: float | None = None,
        acquire_timeout: float = 5.0,
    ) -> None:
        self.params = params
        self.max_open = max_open
        self.max_idle = max_open if max_idle is None else max_idle
        self.max_lifetime = max_lifetime
        self.acquire_timeout = acquire_timeout
        self._slots = threading.BoundedSemaphore(max_open)
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self.open_count = 0

    def _connect(self) -> tuple[psycopg.Connection[Any], float]:
        conn = self.params.connect()
        with self._lock:
            self.open_count += 1
        return conn, time.monotonic()

    def _take(self) -> tuple[tuple[psycopg.Connection[Any], float], bool]:
        with self._lock:
            while self._idle:
                conn, born = self._idle.pop()
                expired = self.max_lifetime is not None and time.monotonic() - born > self.max_lifetime
                if not conn.closed and not conn.broken and not expired:
                    return (conn, born), True
                self._discard(conn)
        return self._connect(), False

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        self.open_count -= 1
        with contextlib.suppress(Exception):  # already broken: nothing more to release
            conn.close()

    def _give_back(self, conn: psycopg.Connection[Any], born: float) -> None:
        healthy = not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if healthy and len(self._idle) < self.max_idle:
                self._idle.append((conn, born))
            else:
                self._discard(conn)

    @contextmanager
    def connection(self) -> Iterator[tuple[psycopg.Connection[Any], bool]]:
        """(connection, reused) for one unit of work."""
        if not self._slots.acquire(timeout=self.acquire_timeout):
            raise PoolTimeout(f"all {self.max_open} database connections stayed busy")
        try:
            (conn, born), reused = self._take()
            try:
                yield conn, reused
            finally:
                self._give_back(conn, born)
        finally:
            self._slots.release()

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """work(conn); once more on a new connection when a reused one turns out dead.

        After a database restart or failover the idle connections are dead and only
        their next use tells; retrying keeps that from looking like an outage.
        """
        with self.connection() as (conn, reused):
            try:
                return work(conn)
            except psycopg.OperationalError:
                if not (reused and conn.broken):
                    raise
        # The other idle connections date from the same server: most likely dead too.
        self.close()
        with self.connection() as (conn, _reused):
            return work(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            for conn, _born in idle:
                self._discard(conn)
