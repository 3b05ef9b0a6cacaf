# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""An in-process stand-in for a Patroni cluster's REST API.

One HTTP server per member on 127.0.0.1, all sharing one :class:`FakeCluster`
state. It follows Patroni 4's contract (patroni/api.py, utils.cluster_as_json):

* GET /cluster: members sorted by name; the leader has no lag fields;
  replicas have lag/receive_lag/replay_lag (bytes or 'unknown') and
  lsn/receive_lsn/replay_lsn; ``pause`` and ``scheduled_switchover`` only
  when set.
* Unsafe methods answer 401 with ``WWW-Authenticate: Basic realm="Patroni"``
  and the text 'no auth header received' or 'not authenticated'.
* POST /switchover: 400 for malformed requests, 412 when not possible
  ('leader name does not match', 'candidate does not exists', 'candidate
  name does not match with sync_standby'), 202 'Switchover scheduled' with
  scheduled_at, else it blocks until the leader moved and answers
  200 'Successfully switched over to "X"' or 503 'Switchover status unknown'
  / 'Switchover failed'.
* POST /restart: 200 'restarted successfully' once PostgreSQL is back, 503
  'restart conditions are not satisfied' when restart_pending was asked but
  nothing is pending.
* Errors Patroni sends through send_error (502 on /config, 400 bad JSON)
  come as BaseHTTPRequestHandler's HTML page.

Switchovers and restarts change the state after short delays, in threads, so
the modules' polling is exercised for real.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_CONFIG: t.Dict[str, t.Any] = {
    "ttl": 30,
    "loop_wait": 10,
    "retry_timeout": 10,
    "maximum_lag_on_failover": 1048576,
    "postgresql": {
        "use_pg_rewind": True,
        "parameters": {"max_connections": 100, "wal_level": "replica", "hot_standby": "on"},
    },
}


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def patch_config(config: t.Dict[str, t.Any], patch: t.Dict[str, t.Any]) -> bool:
    """Patroni's utils.patch_config: null removes a key, dicts merge recursively."""
    changed = False
    for name, value in patch.items():
        if value is None:
            if name in config:
                del config[name]
                changed = True
        elif isinstance(value, dict) and isinstance(config.get(name), dict):
            changed = patch_config(config[name], value) or changed
        elif config.get(name) != value:
            config[name] = copy.deepcopy(value)
            changed = True
    return changed


class FakeMember:
    def __init__(self, name: str, role: str, timeline: int) -> None:
        self.name = name
        self.role = role
        self.state = "running" if role == "leader" else "streaming"
        self.timeline = timeline
        # Bytes behind the leader's position (or 'unknown'): received, replayed.
        self.receive_lag: t.Any = 0
        self.replay_lag: t.Any = 0
        self.tags: t.Dict[str, t.Any] = {}
        self.pending_restart = False
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.restarts = 0

    def set_lag(self, receive: t.Any, replay: t.Any = None) -> None:
        self.receive_lag = receive
        self.replay_lag = receive if replay is None else replay

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/patroni"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class FakeCluster:
    """Shared state of the fake members plus knobs for the tests."""

    LSN = 0x4000060

    def __init__(
        self,
        names: t.Sequence[str] = ("db1", "db2", "db3"),
        leader: str = "db1",
        auth: t.Tuple[str, str] | None = ("patroni", "s3cret"),
        timeline: int = 3,
    ) -> None:
        self.lock = threading.RLock()
        self.scope = "neurondb"
        self.auth = auth
        self.members = {n: FakeMember(n, "leader" if n == leader else "replica", timeline) for n in names}
        self.leader: str | None = leader
        self.paused = False
        self.scheduled: t.Dict[str, t.Any] | None = None
        self.config: t.Dict[str, t.Any] | None = copy.deepcopy(DEFAULT_CONFIG)
        self.history: t.List[t.List[t.Any]] = [
            [1, 25623960, "no recovery target specified", "2025-01-01T10:00:00+00:00"],
            [2, 50331856, "no recovery target specified", "2025-01-02T10:00:00+00:00", "db2"],
        ][: timeline - 1]
        self.requests: t.List[t.Tuple[str, str, str, t.Any]] = []
        # Knobs.
        self.switchover_delay = 0.2  # seconds before the lock moves
        self.timeline_delay = 0.15  # then before the new leader reports its new timeline
        self.switchover_outcome = "success"  # or 'status_unknown', 'failed', 'other_leader'
        self.restart_delay = 0.1
        self.restart_settle = 0.15  # /cluster shows 'starting' this long after /restart answered
        self.patch_status: int | None = None  # force an answer to PATCH /config
        # PostgreSQL parameters whose change flags every member pending_restart
        # a little after the PATCH (as members do in their next HA loop).
        self.restart_parameters = ("max_connections", "shared_buffers")
        self.pending_delay = 0.2
        self._threads: t.List[threading.Thread] = []
        self.events: t.List[t.Tuple[str, str]] = []  # ('restart'|'settled', member), in order

    # -- lifecycle -----------------------------------------------------------------

    def start(self, ports: t.Dict[str, int] | None = None) -> FakeCluster:
        """Serve every member (on the given ports, else on free ones)."""
        for member in self.members.values():
            self.start_member(member.name, (ports or {}).get(member.name, 0))
        return self

    def start_member(self, name: str, port: int = 0) -> None:
        member = self.members[name]
        handler = type("Handler", (_Handler,), {"cluster": self, "member": member})
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        server.daemon_threads = True
        member.server = server
        member.port = server.server_address[1]
        # A short poll interval keeps shutdown() (test teardown) fast.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        for member in self.members.values():
            self.stop_member(member.name)

    def stop_member(self, name: str) -> None:
        """Close a member's API: later connections are refused."""
        member = self.members[name]
        if member.server:
            member.server.shutdown()
            member.server.server_close()
            member.server = None

    @property
    def urls(self) -> t.List[str]:
        return [m.base_url for m in self.members.values()]

    def url(self, name: str) -> str:
        return self.members[name].base_url

    def calls(self, method: str, path: str) -> t.List[t.Tuple[str, str, str, t.Any]]:
        return [r for r in self.requests if r[1] == method and r[2] == path]

    # -- views ---------------------------------------------------------------------

    def cluster_json(self) -> t.Dict[str, t.Any]:
        with self.lock:
            sync = self.config and self.config.get("synchronous_mode")
            members = []
            for m in sorted(self.members.values(), key=lambda m: m.name):
                role = m.role
                if role == "replica" and sync and m.tags.get("sync"):
                    role = "sync_standby"
                entry: t.Dict[str, t.Any] = {
                    "name": m.name,
                    "role": role,
                    "state": m.state,
                    "api_url": m.api_url,
                    "host": "127.0.0.1",
                    "port": 5432 + sorted(self.members).index(m.name),
                    "timeline": m.timeline,
                }
                if m.tags:
                    entry["tags"] = dict(m.tags)
                if m.pending_restart:
                    entry["pending_restart"] = True
                    entry["pending_restart_reason"] = {"max_connections": {"old_value": "100", "new_value": "200"}}
                if m.role != "leader":
                    for prefix, lag in (("receive_", m.receive_lag), ("replay_", m.replay_lag), ("", m.receive_lag)):
                        if lag == "unknown":
                            entry[f"{prefix}lag"] = entry[f"{prefix}lsn"] = "unknown"
                        else:
                            entry[f"{prefix}lag"] = lag
                            entry[f"{prefix}lsn"] = format_lsn(self.LSN - lag)
                members.append(entry)
            result: t.Dict[str, t.Any] = {"members": members, "scope": self.scope}
            if self.paused:
                result["pause"] = True
            if self.scheduled:
                result["scheduled_switchover"] = dict(self.scheduled)
            return result

    def status_json(self, member: FakeMember) -> t.Dict[str, t.Any]:
        with self.lock:
            body: t.Dict[str, t.Any] = {
                "state": "running" if member.state in ("running", "streaming") else member.state,
                "role": "primary" if member.role == "leader" else "replica",
                "server_version": 170002,
                "timeline": member.timeline,
                "dcs_last_seen": int(time.time()),
                "patroni": {"version": "4.0.4", "scope": self.scope, "name": member.name},
            }
            if member.role != "leader":
                body["replication_state"] = "streaming"
            if self.paused:
                body["pause"] = True
            if member.pending_restart:
                body["pending_restart"] = True
            return body

    # -- transitions ---------------------------------------------------------------

    def _later(self, delay: float, func: t.Callable[[], None]) -> None:
        timer = threading.Timer(delay, func)
        timer.daemon = True
        timer.start()

    def promote(self, candidate: str) -> None:
        """Move the leader lock; the new timeline shows up a little later."""
        with self.lock:
            old = self.members[self.leader] if self.leader else None
            new = self.members[candidate]
            old_tl = new.timeline
            if old:
                old.role, old.state = "replica", "streaming"
                old.set_lag(0)
            new.role, new.state = "leader", "running"
            self.leader = candidate

        def new_timeline() -> None:
            with self.lock:
                for m in self.members.values():
                    m.timeline = old_tl + 1
                self.history.append(
                    [old_tl, self.LSN, "no recovery target specified", datetime.datetime.now().isoformat(), candidate]
                )

        self._later(self.timeline_delay, new_timeline)

    def pick_candidate(self) -> str | None:
        with self.lock:
            eligible = [
                m
                for m in self.members.values()
                if m.role != "leader" and not m.tags.get("nofailover") and m.replay_lag != "unknown"
            ]
            return min(eligible, key=lambda m: (m.replay_lag, m.name)).name if eligible else None

    def flag_pending_restart(self) -> None:
        with self.lock:
            for member in self.members.values():
                member.pending_restart = True

    def restart(self, member: FakeMember) -> None:
        with self.lock:
            member.state = "starting"
            member.restarts += 1
            self.events.append(("restart", member.name))

        def settle() -> None:
            with self.lock:
                member.state = "running" if member.role == "leader" else "streaming"
                member.pending_restart = False
                self.events.append(("settled", member.name))

        self._later(self.restart_settle, settle)


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    member: FakeMember
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: t.Any) -> None:  # silence stderr
        pass

    # -- helpers -------------------------------------------------------------------

    def _write(self, status: int, body: t.Any, content_type: str = "text/html") -> None:
        # Like Patroni: plain-text answers go out as text/html.
        if not isinstance(body, str):
            body, content_type = json.dumps(body), "application/json"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Patroni"')
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        auth = self.cluster.auth
        if not auth:
            return True
        header = self.headers.get("Authorization")
        expected = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        if header == expected:
            return True
        self._log()  # before answering, so a test sees it once the client has the answer
        self._write(401, "no auth header received" if header is None else "not authenticated")
        return False

    def _read_json(self, optional: bool = False) -> t.Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            if optional:
                return {}
            self.send_error(411)
            return None
        try:
            data = json.loads(self.rfile.read(length))
        except ValueError:
            self.send_error(400)
            return None
        if not isinstance(data, dict) or (not data and not optional):
            self.send_error(400)
            return None
        return data

    def _log(self, body: t.Any = None) -> None:
        with self.cluster.lock:
            self.cluster.requests.append((self.member.name, self.command, self.path.split("?")[0], body))

    # -- GET -----------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self._log()
        c = self.cluster
        if path == "/cluster":
            return self._write(200, c.cluster_json())
        if path == "/history":
            with c.lock:
                return self._write(200, list(c.history))
        if path == "/config":
            with c.lock:
                if c.config is None:
                    return self.send_error(502)
                return self._write(200, c.config)
        if path in ("/patroni", "/", "/primary", "/leader", "/replica", "/health"):
            status = 200
            with c.lock:
                role, state = self.member.role, self.member.state
            if path in ("/", "/primary", "/leader"):
                status = 200 if role == "leader" else 503
            elif path == "/replica":
                status = 200 if role != "leader" and state in ("running", "streaming") else 503
            elif path == "/health":
                status = 200 if state in ("running", "streaming") else 503
            return self._write(status, c.status_json(self.member))
        self.send_error(404)

    # -- unsafe methods ------------------------------------------------------------

    def do_PATCH(self) -> None:
        if self.path != "/config":
            return self.send_error(501)
        if not self._authorized():
            return None
        request = self._read_json()
        self._log(request)
        if request is None:
            return None
        c = self.cluster
        if c.patch_status:
            return self.send_error(c.patch_status)
        with c.lock:
            if c.config is None:
                return self.send_error(503)
            params = request.get("postgresql", {}).get("parameters") or {}
            if patch_config(c.config, request) and any(p in params for p in c.restart_parameters):
                c._later(c.pending_delay, c.flag_pending_restart)
            c.paused = bool(c.config.get("pause"))
            return self._write(200, c.config)

    def do_DELETE(self) -> None:
        if not self._authorized():
            return None
        self._log()
        c = self.cluster
        if self.path == "/switchover":
            with c.lock:
                if c.scheduled:
                    c.scheduled = None
                    return self._write(200, "scheduled switchover deleted")
            return self._write(404, "no switchover is scheduled")
        self.send_error(501)

    def do_POST(self) -> None:
        if self.path not in ("/switchover", "/restart"):
            return self.send_error(501)
        if not self._authorized():
            return None
        request = self._read_json(optional=self.path == "/restart")
        self._log(request)
        if request is None:
            return None
        if self.path == "/restart":
            return self._restart(request)
        return self._switchover(request)

    def _restart(self, request: t.Dict[str, t.Any]) -> None:
        c = self.cluster
        with c.lock:
            if "restart_pending" in request and not self.member.pending_restart:
                return self._write(503, "restart conditions are not satisfied")
        time.sleep(c.restart_delay)  # Patroni answers once PostgreSQL is up
        c.restart(self.member)
        self._write(200, "restarted successfully")

    def _switchover(self, request: t.Dict[str, t.Any]) -> None:
        c = self.cluster
        leader, candidate = request.get("leader"), request.get("candidate")
        scheduled_at = request.get("scheduled_at")
        with c.lock:
            if not leader:
                return self._write(400, "Switchover could be performed only from a specific leader")
            if scheduled_at and c.paused:
                return self._write(400, "Can't schedule switchover in the paused state")
            if c.paused and not candidate:
                return self._write(400, "Switchover is possible only to a specific candidate in a paused state")
            if leader == candidate:
                return self._write(400, "Switchover target and source are the same")
            if scheduled_at:
                try:
                    when = datetime.datetime.fromisoformat(scheduled_at)
                except ValueError:
                    return self._write(
                        422, "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601"
                    )
                if when.tzinfo is None:
                    return self._write(400, "Timezone information is mandatory for the scheduled switchover")
                c.scheduled = {"at": when.isoformat(), "from": leader}
                if candidate:
                    c.scheduled["to"] = candidate
                return self._write(202, "Switchover scheduled")
            if c.leader != leader:
                return self._write(412, "leader name does not match")
            sync = c.config and c.config.get("synchronous_mode")
            if candidate:
                if sync and candidate in c.members and not c.members[candidate].tags.get("sync"):
                    return self._write(412, "candidate name does not match with sync_standby")
                if candidate not in c.members:
                    return self._write(412, "candidate does not exists")
            target = candidate or c.pick_candidate()
            if not target:
                return self._write(412, "switchover is not possible: no good candidates have been found")
            outcome = c.switchover_outcome
        if outcome == "failed":
            time.sleep(c.switchover_delay)
            return self._write(503, "Switchover failed")
        if outcome == "other_leader":
            other = next(n for n in sorted(c.members) if n not in (leader, target))
            c._later(c.switchover_delay, lambda: c.promote(other))
        else:
            c._later(c.switchover_delay, lambda: c.promote(target))
        if outcome == "status_unknown":
            # Patroni polls for max(10, loop_wait) * 2 s; here: gives up early.
            return self._write(503, "Switchover status unknown")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.05)
            with c.lock:
                if c.leader != leader:
                    if not candidate or c.leader == candidate:
                        return self._write(200, f'Successfully switched over to "{c.leader}"')
                    return self._write(200, f'Switched over to "{c.leader}" instead of "{candidate}"')
        return self._write(503, "Switchover status unknown")
