"""EVENTS_ENABLED / DISTRIBUTED_ENABLED: LISTEN/NOTIFY and a session advisory lock.

Both live in one database session, which transaction pooling does not keep: the
LISTEN and the lock stay on whichever server connection ran them while later
statements go elsewhere. The real agent then silently loses events and leader
election; this one proves its session works (it NOTIFYs itself and checks the
lock) at start and every few seconds, and stops the service when it does not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from neuronref.db import ConnParams, Pool, first_line
from neuronref.logs import fields

from .store import EVENTS_CHANNEL

# The advisory lock key of the distributed coordinator ("NAGT"); one bigint key.
LOCK_KEY = 0x4E414754
CHECK_INTERVAL_S = 5.0
SELF_TEST_TIMEOUT_S = 3.0
TRANSACTION_POOL_HINT = (
    "the database session is not preserved between statements: is the agent connected through a"
    " transaction pool (PgBouncer pool_mode = transaction)? EVENTS_ENABLED and DISTRIBUTED_ENABLED need"
    " a session pool or a direct connection"
)


class SessionBroken(Exception):
    pass


class SessionGuard:
    def __init__(
        self,
        params: ConnParams,
        pool: Pool,
        *,
        distributed: bool,
        log: logging.Logger,
        on_fatal: Callable[[str], None],
    ) -> None:
        self.params = params
        self.pool = pool
        self.distributed = distributed
        self.log = log
        self.on_fatal = on_fatal
        self.leader = False
        self.events_received = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="session-guard", daemon=True)

    def start(self) -> None:
        """Open the session, LISTEN, lock, and prove it works; SessionBroken when it does not."""
        conn = self.params.connect(application_name=f"{self.params.application_name}-events")
        self._conn = conn
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self._pid = row[0]
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        if self.distributed:
            self._try_lock()
        self.self_test()
        self.log.info(
            "events session ready",
            extra=fields(channel=EVENTS_CHANNEL, distributed=self.distributed, leader=self.leader),
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(SELF_TEST_TIMEOUT_S + 2)
        if self._conn is not None:
            # Closing ends the session: the lock and the LISTEN go with it.
            with contextlib.suppress(Exception):
                self._conn.close()

    def _try_lock(self) -> None:
        assert self._conn is not None
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        assert row is not None
        if row[0] and not self.leader:
            self.log.info("took the coordinator lock: this agent leads", extra=fields(lock=LOCK_KEY))
        self.leader = bool(row[0]) or self.leader

    def _handle(self, notify: Any, token: str | None) -> bool:
        """Record one notification; True when it is the awaited self-test."""
        try:
            event = json.loads(notify.payload)
        except ValueError:
            event = {"type": "unknown"}
        if isinstance(event, dict) and event.get("type") == "self-test":
            return token is not None and event.get("token") == token
        self.events_received += 1
        self.log.info("event", extra=fields(channel=notify.channel, event=event))
        return False

    def self_test(self) -> None:
        """NOTIFY from another connection must reach the listening session, which must still be ours."""
        assert self._conn is not None
        token = secrets.token_hex(8)
        payload = json.dumps({"type": "self-test", "token": token})
        self.pool.run(lambda conn: conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, payload)))
        deadline = time.monotonic() + SELF_TEST_TIMEOUT_S
        arrived = False
        while not arrived and time.monotonic() < deadline:
            for notify in self._conn.notifies(timeout=max(deadline - time.monotonic(), 0.01)):
                if self._handle(notify, token):
                    arrived = True
                    break
        if not arrived:
            raise SessionBroken(
                f"a NOTIFY on {EVENTS_CHANNEL} did not reach the LISTEN session: {TRANSACTION_POOL_HINT}"
            )
        row = self._conn.execute("SELECT pg_backend_pid()").fetchone()
        if row is None or row[0] != self._pid:
            raise SessionBroken(f"the LISTEN session moved to another server connection: {TRANSACTION_POOL_HINT}")
        if self.leader:
            held = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                " AND granted AND classid = 0 AND objid = %s AND objsubid = 1",
                (LOCK_KEY,),
            ).fetchone()
            if held is None or held[0] != 1:
                raise SessionBroken(f"the coordinator advisory lock is no longer held: {TRANSACTION_POOL_HINT}")

    def _run(self) -> None:
        assert self._conn is not None
        next_check = time.monotonic() + CHECK_INTERVAL_S
        try:
            while not self._stop.is_set():
                for notify in self._conn.notifies(timeout=0.5):
                    self._handle(notify, None)
                if time.monotonic() >= next_check:
                    if self.distributed and not self.leader:
                        self._try_lock()
                    self.self_test()
                    next_check = time.monotonic() + CHECK_INTERVAL_S
        except SessionBroken as exc:
            self.on_fatal(str(exc))
        except psycopg.Error as exc:
            if not self._stop.is_set():
                self.on_fatal(f"the events session failed: {first_line(exc)}")
