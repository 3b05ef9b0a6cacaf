#!/usr/bin/python3
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Follow one HAProxy through a planned switchover (role neurondb.ha.switchover).

Started before PgBouncer is paused. Watches the HAProxy backend of the primary
through the runtime API socket until the new leader is UP and the old one is
not, and on a PgBouncer host then RESUMEs the local PgBouncer at once: each
PgBouncer only reaches the database through its own router, so its clients
wait no longer than that router needs.

Nothing is resumed, and no server state is changed, until Patroni's REST API
says that the new leader is primary with PostgreSQL out of recovery (Patroni
answers GET /primary with 200 as soon as it holds the leader lock, a moment
before the promotion ends) and that the old leader is not. With --force that
verdict is then applied to HAProxy (`set server ... health up|down`) instead
of waiting rise x fastinter for its own checks, which keep running and would
correct a wrong state.

Never leaves PgBouncer paused on its own account: at its deadline (Patroni
did not confirm within --timeout, or HAProxy did not follow within
--router-timeout of that) and on any unexpected error it RESUMEs before it
exits, so a lost controller costs the clients a longer stall, not an outage.
Only when the role tells it to stop (the stop file) does it leave RESUME to
the role.

Standard library only, plus psycopg 3 on PgBouncer hosts (which the
neurondb.ha.pgbouncer_command module needs as well). Prints one JSON object.
Exit codes: 0 done; 1 timed out, RESUME failed or an unexpected error
(PgBouncer resumed anyway: never left paused); 2 stopped by the stop file
(the role resumes); 3 a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_STOPPED = 2
EXIT_REFUSED = 3

# srv_op_state of a server that takes traffic (HAProxy's SRV_ST_RUNNING).
SRV_RUNNING = 2
# srv_admin_state flags of maintenance and drain: no new connections.
ADMIN_UNUSABLE = 0x7F

# {server name: {"op": srv_op_state, "admin": srv_admin_state, "usable": bool}};
# {"error": text} when the runtime API could not be read.
Servers = dict[str, Any]
# (HTTP status or None when unreachable, role, state) of GET /primary.
PrimaryAnswer = tuple[Optional[int], Optional[str], Optional[str]]


def runtime_api(path: str, command: str, timeout: float = 2.0) -> str:
    """One command on HAProxy's runtime API socket; HAProxy answers and closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_servers_state(text: str, backend: str) -> Servers:
    """The servers of one backend in the output of `show servers state <backend>`.

    The output is a format version line, a `#` header naming the columns, then
    one line per server: be_id be_name srv_id srv_name srv_addr srv_op_state
    srv_admin_state ... A server is usable when it is running and neither in
    maintenance nor draining.
    """
    found: Servers = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) <= 6 or fields[1] != backend:
            continue
        try:
            op, admin = int(fields[5]), int(fields[6])
        except ValueError:
            continue
        found[fields[3]] = {"op": op, "admin": admin, "usable": op == SRV_RUNNING and not admin & ADMIN_UNUSABLE}
    return found


def read_servers(path: str, backend: str) -> Servers:
    return parse_servers_state(runtime_api(path, f"show servers state {backend}"), backend)


def routes_to(servers: Servers, new: str, old: str) -> bool:
    """Whether HAProxy sends the backend's traffic to the new leader alone."""
    return bool((servers.get(new) or {}).get("usable")) and not (servers.get(old) or {}).get("usable")


def patroni_primary(base_url: str, context: ssl.SSLContext, timeout: float) -> PrimaryAnswer:
    """GET /primary on one member: (HTTP status or None, role, state)."""
    try:
        with urllib.request.urlopen(base_url + "/primary", context=context, timeout=timeout) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (OSError, ValueError):
        return None, None, None
    try:
        data = json.loads(body)
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return status, data.get("role"), data.get("state")


def is_promoted(answer: PrimaryAnswer) -> bool:
    """Whether a member's GET /primary says it leads with PostgreSQL out of recovery."""
    status, role, state = answer
    return status == 200 and role in ("primary", "master") and state == "running"


class Pooler(Protocol):
    """What the follower needs of PgBouncer's admin console."""

    errors: tuple[type[BaseException], ...]

    def state(self) -> dict[str, bool]: ...

    def resume(self) -> tuple[bool, str]: ...


class Console:
    """PgBouncer's admin console, connected before the pause so that RESUME
    costs one round trip."""

    def __init__(self, conninfo: str) -> None:
        import psycopg  # only PgBouncer hosts need it

        self.errors: tuple[type[BaseException], ...] = (psycopg.Error, OSError)
        # Simple query protocol, no transaction: all the console understands.
        self.conn = psycopg.connect(
            conninfo, autocommit=True, prepare_threshold=None, cursor_factory=psycopg.ClientCursor
        )

    def run(self, command: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(command)
            return cur.fetchall() if cur.description else []

    def state(self) -> dict[str, bool]:
        """SHOW STATE: {"active": ..., "paused": ..., "suspended": ...}."""
        return {str(row[0]): str(row[1]) == "yes" for row in self.run("SHOW STATE")}

    def resume(self) -> tuple[bool, str]:
        """(resumed, error). A PgBouncer that is not paused counts as resumed."""
        try:
            self.run("RESUME")
        except self.errors as exc:
            if "not paused" not in str(exc):
                return False, str(exc).strip()
        return True, ""


def check(
    servers: Servers | None,
    servers_error: str,
    old: str,
    new: str,
    backend: str,
    pooler_state: dict[str, bool] | None,
    pooler_error: str,
    check_mode: bool,
) -> list[str]:
    """Why the follower cannot do its work (empty: it can).

    servers is None when the runtime API could not be read (servers_error
    says why); pooler_state is None on a host without PgBouncer or when the
    console failed (pooler_error says why). Outside check mode only what the
    follower itself needs is checked, not the cluster's state.
    """
    problems = []
    if servers is None:
        problems.append(servers_error)
    else:
        problems.extend(
            f"HAProxy backend {backend} has no server {name} (it has {sorted(servers)})"
            for name in (old, new)
            if name not in servers
        )
    if pooler_error:
        problems.append(pooler_error)
    elif check_mode and pooler_state and (pooler_state.get("paused") or pooler_state.get("suspended")):
        problems.append("PgBouncer is already paused or suspended; find out who did it, or RESUME it")
    if check_mode and servers and old in servers and not servers[old]["usable"]:
        problems.append(f"HAProxy does not route {backend} to the leader {old} now ({servers[old]})")
    return problems


@dataclass
class Follower:
    """The follow loop, with its I/O given as functions (the tests fake them)."""

    backend: str
    old: str
    new: str
    old_api: str
    new_api: str
    timeout: float
    router_timeout: float
    force: bool
    read_servers: Callable[[], Servers]
    set_health: Callable[[str, str], str]
    patroni: Callable[[str], PrimaryAnswer]
    console: Pooler | None = None
    stop_file: str | None = None
    interval: float = 0.05
    probe_interval: float = 0.2
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    out: dict[str, Any] = field(default_factory=dict)

    def stopped(self) -> bool:
        """The role's stop file appeared, or the role removed its directory."""
        if not self.stop_file:
            return False
        return os.path.exists(self.stop_file) or not os.path.isdir(os.path.dirname(self.stop_file))

    def resume(self) -> bool:
        """RESUME the local PgBouncer, when there is one; whether it runs now."""
        if self.console is None:
            return True
        self.out["resumed"], self.out["resume_error"] = self.console.resume()
        self.out["resumed_at"] = round(self.clock(), 3)
        return bool(self.out["resumed"])

    def note_pause(self, now: float) -> None:
        """When PAUSE was issued: from then on, new queries wait."""
        if self.console is None or "paused_at" in self.out:
            return
        try:
            if self.console.state().get("paused"):
                self.out["paused_at"] = round(now, 3)
        except self.console.errors:
            pass

    def confirmed(self) -> bool:
        """Patroni's verdict: the new leader promoted, the old one no longer primary."""
        if not is_promoted(self.patroni(self.new_api)):
            return False
        # Asked only then: each call costs Patroni a query.
        return self.patroni(self.old_api)[0] != 200

    def force_routing(self, servers: Servers) -> None:
        """Apply Patroni's verdict to HAProxy through its runtime API."""
        new, old = servers.get(self.new) or {}, servers.get(self.old) or {}
        for name, health, done in ((self.new, "up", new.get("usable")), (self.old, "down", not old.get("usable"))):
            if done:
                continue
            try:
                reply = self.set_health(name, health).strip()
            except OSError as exc:
                # HAProxy's own checks still follow; the deadline still holds.
                reply = f"failed: {exc}"
            self.out["forced"].append(f"{name} {health}" + (f" ({reply})" if reply else ""))

    def run(self, started: float) -> int:
        """Follow until HAProxy routes to the new leader alone, then RESUME."""
        self.out.setdefault("forced", [])
        self.out.setdefault("resumed", False)
        deadline = started + self.timeout
        next_probe = 0.0
        confirmed = forced = False
        last: Servers = {}
        while True:
            now = self.clock()
            self.note_pause(now)
            if self.stopped():
                self.out.update(error="stopped by the playbook", servers=last)
                return EXIT_STOPPED
            if now > deadline:
                if confirmed:
                    error = (
                        f"HAProxy did not route {self.backend} to {self.new} alone within {self.router_timeout:.0f}s"
                    )
                else:
                    error = f"Patroni did not report {self.new} primary and {self.old} not within {self.timeout:.0f}s"
                self.out.update(error=error, servers=last)
                # Never leave the clients waiting on a paused PgBouncer.
                self.resume()
                return EXIT_FAILED
            try:
                last = self.read_servers()
            except OSError as exc:
                last = {"error": str(exc)}
            routed = routes_to(last, self.new, self.old)
            if not confirmed and now >= next_probe:
                # What HAProxy's checks will find, and whether the new primary
                # takes writes yet: a few calls per second at most.
                next_probe = now + self.probe_interval
                confirmed = self.confirmed()
                if confirmed:
                    self.out["patroni_confirmed_at"] = round(self.clock(), 3)
                    deadline = self.clock() + self.router_timeout
            if confirmed and routed:
                break
            if confirmed and self.force and not forced:
                forced = True
                self.force_routing(last)
                continue  # read the state back before trusting it
            self.sleep(self.interval)

        ready_at = self.clock()
        self.out.update(router_ready_at=round(ready_at, 3), servers=last)
        # From Patroni's verdict to this HAProxy routing to the new leader alone.
        self.out["router_seconds"] = round(ready_at - self.out["patroni_confirmed_at"], 3)
        if self.console is None:
            return EXIT_DONE
        resumed = self.resume()
        if "paused_at" in self.out:
            self.out["stall"] = round(self.out["resumed_at"] - self.out["paused_at"], 3)
        if not resumed:
            self.out["error"] = f"RESUME failed: {self.out['resume_error']}"
            return EXIT_FAILED
        return EXIT_DONE


def build_parser() -> argparse.ArgumentParser:
    """The command line; the role's switchover_follow_argv (vars/main.yml) builds it."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--socket", required=True, help="HAProxy runtime API socket")
    p.add_argument("--backend", required=True)
    p.add_argument("--old", required=True, help="HAProxy server name of the old leader")
    p.add_argument("--new", required=True, help="HAProxy server name of the new leader")
    p.add_argument("--old-api", required=True, help="Patroni REST base URL of the old leader")
    p.add_argument("--new-api", required=True, help="Patroni REST base URL of the new leader")
    p.add_argument("--ca", required=True, help="CA bundle to verify Patroni with")
    p.add_argument("--timeout", type=float, default=120, help="seconds for Patroni to promote the new leader")
    p.add_argument("--router-timeout", type=float, default=30, help="seconds for HAProxy to follow, from then on")
    p.add_argument("--force", action="store_true", help="apply Patroni's verdict to HAProxy at once")
    p.add_argument("--pgbouncer", help="libpq conninfo of the PgBouncer admin console to RESUME")
    p.add_argument("--stop-file", help="exit without resuming when this file appears or its directory goes")
    p.add_argument("--check", action="store_true", help="only check that everything needed works")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between reads of HAProxy")
    p.add_argument("--probe-interval", type=float, default=0.2, help="seconds between calls to Patroni")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None, connect: Callable[[str], Pooler] = Console) -> int:
    """Run the follower (or its checks) and print its JSON result; the exit code."""
    args = parse_args(argv)
    started = time.time()
    out: dict[str, Any] = {
        "host": socket.gethostname(),
        "started_at": round(started, 3),
        "forced": [],
        "resumed": False,
    }
    context = ssl.create_default_context(cafile=args.ca)

    servers: Servers | None = None
    servers_error = ""
    try:
        servers = read_servers(args.socket, args.backend)
    except OSError as exc:
        servers_error = f"HAProxy runtime API {args.socket}: {exc}"
    console: Pooler | None = None
    pooler_state: dict[str, bool] | None = None
    pooler_error = ""
    if args.pgbouncer:
        try:
            console = connect(args.pgbouncer)
            pooler_state = console.state()
        except Exception as exc:  # ImportError, or any connection or console error
            pooler_error = f"PgBouncer admin console: {type(exc).__name__}: {str(exc).strip()}"
    problems = check(servers, servers_error, args.old, args.new, args.backend, pooler_state, pooler_error, args.check)
    if args.check or problems:
        out.update(servers=servers or {}, problems=problems)
        print(json.dumps(out))
        return EXIT_REFUSED if problems else EXIT_DONE

    follower = Follower(
        backend=args.backend,
        old=args.old,
        new=args.new,
        old_api=args.old_api,
        new_api=args.new_api,
        timeout=args.timeout,
        router_timeout=args.router_timeout,
        force=args.force,
        read_servers=lambda: read_servers(args.socket, args.backend),
        set_health=lambda name, health: runtime_api(args.socket, f"set server {args.backend}/{name} health {health}"),
        patroni=lambda url: patroni_primary(url, context, 1.0),
        console=console,
        stop_file=args.stop_file,
        interval=args.interval,
        probe_interval=args.probe_interval,
        out=out,
    )
    try:
        code = follower.run(started)
    except Exception as exc:
        # A bug or an unforeseen error must not leave the clients paused.
        out["error"] = f"follower failed: {type(exc).__name__}: {exc}"
        try:
            follower.resume()
        except Exception as again:
            out["resume_error"] = f"{type(again).__name__}: {again}"
        code = EXIT_FAILED
    print(json.dumps(out))
    return code


if __name__ == "__main__":
    sys.exit(main())
