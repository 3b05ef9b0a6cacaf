# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The switchover follower (roles/switchover/files/neurondb_switchover_follower.py).

Its decisions, each on its own: which servers HAProxy's runtime API shows
usable, when Patroni's verdict counts, that nothing is resumed or forced
before it, that a deadline resumes PgBouncer even when nothing happens, that
a failed RESUME is an error, what the checks refuse. The follow loop runs on
a fake clock with fake I/O (instant); main() and the program itself run
against local stand-ins that speak the real protocols (fake_services.py):
HAProxy's runtime socket, Patroni's REST API over TLS, PgBouncer's console.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
from pathlib import Path

import pytest
from fake_services import (
    FOLLOWER,
    SRV_RUNNING,
    SRV_STOPPED,
    FakeHAProxy,
    FakePatroni,
    FakePgBouncer,
    load_follower,
    make_pki,
)

SCRIPT = FOLLOWER


follower = load_follower()

# A real `show servers state postgres_primary` of the drill scenario's router
# (HAProxy 3.0.11 on Debian 13) while drill-db1 led: db1 UP, the replicas
# DOWN (their /primary check answers 503).
LAB_SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
    "5 postgres_primary 1 drill-db1 172.29.30.11 2 0 1 1 46 15 3 3 6 0 0 0 - 5432 - 0 8008 - - 8008\n"
    "5 postgres_primary 2 drill-db2 172.29.30.12 0 0 1 1 45 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n"
    "5 postgres_primary 3 drill-db3 172.29.30.13 0 0 1 1 45 17 2 0 6 0 0 0 - 5432 - 0 8008 - - 8008\n\n"
)


# --------------------------------------------------------------------------- parsing and verdicts


def test_parse_servers_state_of_the_lab() -> None:
    servers = follower.parse_servers_state(LAB_SERVERS_STATE, "postgres_primary")
    assert servers == {
        "drill-db1": {"op": 2, "admin": 0, "usable": True},
        "drill-db2": {"op": 0, "admin": 0, "usable": False},
        "drill-db3": {"op": 0, "admin": 0, "usable": False},
    }


@pytest.mark.parametrize(
    ("op", "admin", "usable"),
    [
        (2, 0, True),  # running
        (0, 0, False),  # stopped (checks fail)
        (1, 0, False),  # starting (slowstart)
        (3, 0, False),  # stopping
        (2, 0x01, False),  # forced maintenance
        (2, 0x08, False),  # forced drain
        (2, 0x20, False),  # maintenance through a resolver
        (2, 0x80, True),  # a flag outside maintenance and drain
    ],
)
def test_a_server_is_usable_only_running_and_neither_in_maintenance_nor_draining(
    op: int, admin: int, usable: bool
) -> None:
    text = f"1\n# be_id be_name srv_id srv_name\n3 postgres_primary 1 db1 10.0.0.1 {op} {admin} 1 1 5 6 3 4 6 0\n"
    assert follower.parse_servers_state(text, "postgres_primary")["db1"]["usable"] is usable


def test_parse_servers_state_keeps_to_its_backend_and_skips_what_is_not_a_server_line() -> None:
    text = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
        "3 postgres_primary 1 db1 10.0.0.1 2 0 1 1\n"
        "4 postgres_replicas 1 db2 10.0.0.2 2 0 1 1\n"
        "3 postgres_primary 2 db2 10.0.0.2 x 0 1 1\n"  # garbled: skipped, not a crash
        "3 postgres_primary 3\n"
        "\n"
    )
    assert follower.parse_servers_state(text, "postgres_primary") == {"db1": {"op": 2, "admin": 0, "usable": True}}
    assert follower.parse_servers_state("Can't find backend 'x'.\n", "x") == {}


UP = {"op": 2, "admin": 0, "usable": True}
DOWN = {"op": 0, "admin": 0, "usable": False}


@pytest.mark.parametrize(
    ("servers", "routed"),
    [
        ({"db1": UP, "db2": DOWN}, False),
        ({"db1": UP, "db2": UP}, False),  # both: the old leader still gets connections
        ({"db1": DOWN, "db2": DOWN}, False),
        ({"db1": DOWN, "db2": UP}, True),
        ({"db2": UP}, True),
        ({"error": "connection refused"}, False),
        ({}, False),
    ],
)
def test_routes_to_the_new_leader_alone(servers: t.Dict[str, t.Any], routed: bool) -> None:
    assert follower.routes_to(servers, "db2", "db1") is routed


@pytest.mark.parametrize(
    ("answer", "promoted"),
    [
        ((200, "primary", "running"), True),
        ((200, "master", "running"), True),  # Patroni before 3.0
        ((200, "replica", "running"), False),  # holds the lock, still promoting
        ((200, "primary", "starting"), False),
        ((503, "replica", "running"), False),
        ((None, None, None), False),  # unreachable
    ],
)
def test_is_promoted(answer: t.Tuple[t.Any, ...], promoted: bool) -> None:
    assert follower.is_promoted(answer) is promoted


# --------------------------------------------------------------------------- the follow loop, on a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Console:
    """The follower's view of PgBouncer: paused `paused_at` seconds after the start."""

    errors = (ConnectionError,)

    def __init__(self, clock: Clock, paused_at: float = 0.0, resume_result: t.Tuple[bool, str] = (True, "")) -> None:
        self.clock = clock
        self.paused_at = clock.now + paused_at
        self.resumed = False
        self.resume_result = resume_result
        self.resumes: t.List[float] = []

    def state(self) -> t.Dict[str, bool]:
        paused = self.clock.now >= self.paused_at and not self.resumed
        return {"active": not paused, "paused": paused, "suspended": False}

    def resume(self) -> t.Tuple[bool, str]:
        self.resumes.append(self.clock.now)
        self.resumed = self.resume_result[0]
        return self.resume_result


class Scene:
    """HAProxy and Patroni as a function of the fake clock; knobs in seconds from the start."""

    def __init__(
        self,
        clock: Clock,
        lock_at: float = 1e9,
        promoted_at: float = 1e9,
        old_demoted_at: float = 0.0,
        haproxy_follows_at: float = 1e9,
        console: Console | None = None,
        **follower_args: t.Any,
    ) -> None:
        self.clock = clock
        self.start = clock.now
        self.lock_at, self.promoted_at, self.old_demoted_at = lock_at, promoted_at, old_demoted_at
        self.haproxy_follows_at = haproxy_follows_at
        self.forced: t.Dict[str, str] = {}
        self.sets: t.List[t.Tuple[float, str, str]] = []
        self.patroni_calls: t.List[t.Tuple[float, str]] = []
        self.read_errors_until = 0.0
        args: t.Dict[str, t.Any] = {
            "backend": "postgres_primary",
            "old": "db1",
            "new": "db2",
            "old_api": "https://db1:8008",
            "new_api": "https://db2:8008",
            "timeout": 60.0,
            "router_timeout": 30.0,
            "force": False,
            "read_servers": self.read_servers,
            "set_health": self.set_health,
            "patroni": self.patroni,
            "console": console,
            "clock": clock.time,
            "sleep": clock.sleep,
            "out": {"forced": [], "resumed": False},
        }
        args.update(follower_args)
        self.follower = follower.Follower(**args)

    def elapsed(self) -> float:
        return self.clock.now - self.start

    def read_servers(self) -> t.Dict[str, t.Any]:
        if self.elapsed() < self.read_errors_until:
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        followed = self.elapsed() >= self.haproxy_follows_at
        servers = {"db1": DOWN if followed else UP, "db2": UP if followed else DOWN, "db3": DOWN}
        for name, health in self.forced.items():
            servers[name] = UP if health == "up" else DOWN
        return servers

    def set_health(self, name: str, health: str) -> str:
        self.sets.append((self.elapsed(), name, health))
        self.forced[name] = health
        return ""

    def patroni(self, url: str) -> t.Tuple[t.Any, ...]:
        now = self.elapsed()
        self.patroni_calls.append((now, url))
        if url.startswith("https://db2"):
            if now >= self.promoted_at:
                return 200, "primary", "running"
            return (200 if now >= self.lock_at else 503), "replica", "running"
        if now >= self.old_demoted_at:
            return 503, "replica", "running"
        return 200, "primary", "running"

    def run(self) -> int:
        return self.follower.run(self.start)

    @property
    def out(self) -> t.Dict[str, t.Any]:
        return self.follower.out


def test_resumes_once_patroni_confirms_and_the_router_follows() -> None:
    clock = Clock()
    console = Console(clock, paused_at=0.5)
    scene = Scene(clock, lock_at=2.0, promoted_at=2.4, old_demoted_at=1.0, haproxy_follows_at=3.0, console=console)
    assert scene.run() == follower.EXIT_DONE
    out = scene.out
    assert out["resumed"] is True and out["resume_error"] == ""
    assert console.resumes == [pytest.approx(clock.now)]
    # Confirmed at the first probe after the promotion (every 0.2 s), routed at 3.0 s.
    assert 2.4 <= out["patroni_confirmed_at"] - scene.start < 2.65
    assert 3.0 <= out["router_ready_at"] - scene.start < 3.1
    assert out["router_seconds"] == pytest.approx(out["router_ready_at"] - out["patroni_confirmed_at"], abs=0.002)
    # PAUSE seen at its first read after 0.5 s; the stall is PAUSE to RESUME.
    assert 0.5 <= out["paused_at"] - scene.start < 0.6
    assert out["stall"] == pytest.approx(out["resumed_at"] - out["paused_at"], abs=0.002)
    assert out["forced"] == [] and scene.sets == []
    assert "error" not in out


def test_nothing_is_resumed_before_patroni_says_the_new_leader_is_primary() -> None:
    # HAProxy flips early (its checks saw the lock move), and the new leader
    # answers 200 while it still promotes: neither is Patroni's verdict.
    clock = Clock()
    console = Console(clock)
    scene = Scene(clock, lock_at=1.0, promoted_at=4.0, old_demoted_at=1.0, haproxy_follows_at=0.0, console=console)
    assert scene.run() == follower.EXIT_DONE
    assert len(console.resumes) == 1
    assert console.resumes[0] - scene.start >= 4.0
    assert console.resumes[0] >= scene.out["patroni_confirmed_at"] - 0.001  # rounded to ms


def test_the_old_leader_still_answering_primary_holds_the_verdict() -> None:
    clock = Clock()
    console = Console(clock)
    scene = Scene(clock, promoted_at=1.0, old_demoted_at=5.0, haproxy_follows_at=0.0, console=console)
    assert scene.run() == follower.EXIT_DONE
    assert console.resumes[0] - scene.start >= 5.0
    # The old leader is only asked once the new one is promoted.
    assert all(now >= 1.0 for now, url in scene.patroni_calls if url.startswith("https://db1"))


def test_patroni_is_asked_a_few_times_a_second_not_at_every_haproxy_read() -> None:
    clock = Clock()
    scene = Scene(clock, promoted_at=10.0, haproxy_follows_at=10.5)
    assert scene.run() == follower.EXIT_DONE
    new_calls = [now for now, url in scene.patroni_calls if url.startswith("https://db2")]
    assert 30 <= len(new_calls) <= 55  # every 0.2 s (and a read of HAProxy) for 10 s, not every 0.05 s


def test_resumes_at_its_deadline_when_nothing_happens() -> None:
    # The controller was lost after PAUSE: no switchover, no stop file.
    clock = Clock()
    console = Console(clock)
    scene = Scene(clock, timeout=5.0, console=console)
    assert scene.run() == follower.EXIT_FAILED
    assert len(console.resumes) == 1
    assert 5.0 < console.resumes[0] - scene.start < 5.1
    assert scene.out["resumed"] is True
    assert scene.out["error"] == "Patroni did not report db2 primary and db1 not within 5s"
    assert "patroni_confirmed_at" not in scene.out


def test_resumes_at_the_router_deadline_when_haproxy_does_not_follow() -> None:
    clock = Clock()
    console = Console(clock)
    scene = Scene(clock, promoted_at=2.0, timeout=60.0, router_timeout=3.0, console=console)
    assert scene.run() == follower.EXIT_FAILED
    # The router's deadline runs from Patroni's verdict, not from the start.
    assert 5.0 < console.resumes[0] - scene.start < 5.3
    assert scene.out["error"] == "HAProxy did not route postgres_primary to db2 alone within 3s"
    assert scene.out["resumed"] is True
    assert scene.sets == []  # not forced: HAProxy's own checks were waited for


def test_a_deadline_with_nothing_to_resume_still_ends() -> None:
    clock = Clock()
    scene = Scene(clock, timeout=2.0)  # an edge HAProxy: no PgBouncer beside it
    assert scene.run() == follower.EXIT_FAILED
    assert scene.out["resumed"] is False and "resumed_at" not in scene.out


def test_force_tells_haproxy_once_patroni_confirms() -> None:
    clock = Clock()
    console = Console(clock)
    scene = Scene(clock, lock_at=1.0, promoted_at=2.0, force=True, console=console)
    assert scene.run() == follower.EXIT_DONE
    assert [(name, health) for _at, name, health in scene.sets] == [("db2", "up"), ("db1", "down")]
    confirmed = scene.out["patroni_confirmed_at"] - scene.start
    assert all(at >= confirmed - 0.001 for at, _name, _health in scene.sets)
    assert scene.out["forced"] == ["db2 up", "db1 down"]
    assert console.resumes[0] - scene.start < confirmed + 0.1


def test_force_only_sets_what_haproxy_does_not_show_yet() -> None:
    clock = Clock()
    scene = Scene(clock, promoted_at=2.0, haproxy_follows_at=1.0, force=True)
    assert scene.run() == follower.EXIT_DONE
    assert scene.sets == []


def test_a_failed_set_server_is_noted_and_the_checks_are_waited_for() -> None:
    clock = Clock()
    scene = Scene(clock, promoted_at=1.0, haproxy_follows_at=2.0, force=True)

    def refuse(name: str, health: str) -> str:
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    scene.follower.set_health = refuse
    assert scene.run() == follower.EXIT_DONE
    assert scene.out["forced"] == [
        "db2 up (failed: [Errno 111] Connection refused)",
        "db1 down (failed: [Errno 111] Connection refused)",
    ]
    assert scene.out["router_ready_at"] - scene.start >= 2.0


def test_a_failed_resume_is_an_error() -> None:
    clock = Clock()
    console = Console(clock, resume_result=(False, "admin access needed"))
    scene = Scene(clock, promoted_at=1.0, haproxy_follows_at=1.0, console=console)
    assert scene.run() == follower.EXIT_FAILED
    assert scene.out["error"] == "RESUME failed: admin access needed"
    assert scene.out["resumed"] is False


def test_the_stop_file_ends_it_without_resuming(tmp_path: Path) -> None:
    clock = Clock()
    console = Console(clock)
    stop = tmp_path / "stop"
    scene = Scene(clock, console=console, stop_file=str(stop))

    def sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now - scene.start >= 1.0:
            stop.touch()

    scene.follower.sleep = sleep
    assert scene.run() == follower.EXIT_STOPPED
    assert console.resumes == []  # the role resumes
    assert scene.out["error"] == "stopped by the playbook"


def test_a_removed_directory_ends_it_too(tmp_path: Path) -> None:
    clock = Clock()
    console = Console(clock)
    directory = tmp_path / "neurondb-switchover"
    directory.mkdir()
    scene = Scene(clock, console=console, stop_file=str(directory / "stop"))
    shutil.rmtree(directory)
    assert scene.run() == follower.EXIT_STOPPED
    assert console.resumes == []


def test_an_unreadable_runtime_api_is_retried() -> None:
    clock = Clock()
    scene = Scene(clock, promoted_at=1.0, haproxy_follows_at=0.0)
    scene.read_errors_until = 3.0
    assert scene.run() == follower.EXIT_DONE
    assert scene.out["router_ready_at"] - scene.start >= 3.0


def test_a_console_error_while_watching_for_the_pause_is_not_fatal() -> None:
    clock = Clock()
    console = Console(clock)
    calls = {"n": 0}
    state = console.state

    def flaky() -> t.Dict[str, bool]:
        calls["n"] += 1
        if calls["n"] < 5:
            raise ConnectionError("server closed the connection unexpectedly")
        return state()

    console.state = flaky  # type: ignore[method-assign]
    scene = Scene(clock, promoted_at=1.0, haproxy_follows_at=1.0, console=console)
    assert scene.run() == follower.EXIT_DONE
    assert "paused_at" in scene.out and scene.out["resumed"] is True


# --------------------------------------------------------------------------- the checks


def test_check_refusals() -> None:
    servers = {"db1": UP, "db2": DOWN}
    running = {"active": True, "paused": False, "suspended": False}
    assert follower.check(servers, "", "db1", "db2", "b", running, "", check_mode=True) == []
    assert follower.check(None, "HAProxy runtime API /run/x.sock: refused", "db1", "db2", "b", running, "", True) == [
        "HAProxy runtime API /run/x.sock: refused"
    ]
    assert follower.check({"db1": UP}, "", "db1", "db2", "b", running, "", True) == [
        "HAProxy backend b has no server db2 (it has ['db1'])"
    ]
    assert follower.check({"db1": DOWN, "db2": DOWN}, "", "db1", "db2", "b", running, "", True) == [
        f"HAProxy does not route b to the leader db1 now ({DOWN})"
    ]
    paused = {"active": False, "paused": True, "suspended": False}
    suspended = {"active": False, "paused": False, "suspended": True}
    for state in (paused, suspended):
        assert follower.check(servers, "", "db1", "db2", "b", state, "", True) == [
            "PgBouncer is already paused or suspended; find out who did it, or RESUME it"
        ]
    assert follower.check(servers, "", "db1", "db2", "b", None, "PgBouncer admin console: boom", True) == [
        "PgBouncer admin console: boom"
    ]


def test_outside_check_mode_only_what_the_follower_needs_is_checked() -> None:
    # Started before PAUSE; by then PgBouncer may be paused and HAProxy moving.
    paused = {"active": False, "paused": True, "suspended": False}
    assert follower.check({"db1": DOWN, "db2": DOWN}, "", "db1", "db2", "b", paused, "", check_mode=False) == []
    assert follower.check({"db1": UP}, "", "db1", "db2", "b", paused, "", check_mode=False) == [
        "HAProxy backend b has no server db2 (it has ['db1'])"
    ]


# --------------------------------------------------------------------------- main() and the program, on stand-ins


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> t.Tuple[str, str, str]:
    return make_pki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def short_dir() -> t.Iterator[str]:
    # A Unix socket path must stay under 108 bytes; pytest's tmp_path may not.
    path = tempfile.mkdtemp(prefix="nso", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def haproxy(short_dir: str) -> t.Iterator[FakeHAProxy]:
    fake = FakeHAProxy(
        os.path.join(short_dir, "admin.sock"), {"db1": SRV_RUNNING, "db2": SRV_STOPPED, "db3": SRV_STOPPED}
    )
    yield fake
    fake.close()


@pytest.fixture
def patroni(pki: t.Tuple[str, str, str]) -> t.Iterator[t.Dict[str, FakePatroni]]:
    cert, key = pki[1], pki[2]
    members = {"db1": FakePatroni(cert, key, role="primary"), "db2": FakePatroni(cert, key)}
    yield members
    for member in members.values():
        member.close()


@pytest.fixture
def pgbouncer() -> t.Iterator[FakePgBouncer]:
    pytest.importorskip("psycopg")
    fake = FakePgBouncer()
    yield fake
    fake.close()


def argv(
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    ca: str,
    pgbouncer: FakePgBouncer | None,
    directory: str,
    *extra: str,
) -> t.List[str]:
    """The follower's arguments as the role gives them (vars/main.yml, switchover_follow_argv)."""
    args = ["--socket", haproxy.path, "--backend", "postgres_primary", "--old", "db1", "--new", "db2"]
    args += ["--old-api", patroni["db1"].url, "--new-api", patroni["db2"].url, "--ca", ca]
    args += ["--timeout", "20", "--router-timeout", "10", "--stop-file", os.path.join(directory, "stop")]
    if pgbouncer is not None:
        args += ["--pgbouncer", pgbouncer.conninfo(pgbouncer.write_passfile(os.path.join(directory, "pgpass")))]
    return args + list(extra)


def run_main(capsys: pytest.CaptureFixture[str], args: t.List[str]) -> t.Tuple[int, t.Dict[str, t.Any]]:
    code = follower.main(args)
    return code, json.loads(capsys.readouterr().out)


def test_check_mode_passes_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pgbouncer: FakePgBouncer,
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    code, out = run_main(capsys, argv(haproxy, patroni, pki[0], pgbouncer, short_dir, "--force", "--check"))
    assert code == follower.EXIT_DONE, out
    assert out["problems"] == []
    assert set(out["servers"]) == {"db1", "db2", "db3"}
    assert [q for _at, q in pgbouncer.queries] == ["SHOW STATE"]
    assert haproxy.sets() == []
    assert not patroni["db1"].calls and not patroni["db2"].calls


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        ("no socket", "HAProxy runtime API "),
        ("unknown server", "HAProxy backend postgres_primary has no server db2"),
        ("leader down", "HAProxy does not route postgres_primary to the leader db1 now"),
        ("paused", "PgBouncer is already paused or suspended"),
        ("wrong password", "PgBouncer admin console: OperationalError: connection failed: connection to server at"),
        ("no pgbouncer", "PgBouncer admin console: OperationalError: connection failed"),
    ],
)
def test_check_mode_refusals(
    capsys: pytest.CaptureFixture[str],
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pgbouncer: FakePgBouncer,
    pki: t.Tuple[str, str, str],
    short_dir: str,
    breakage: str,
    problem: str,
) -> None:
    args = argv(haproxy, patroni, pki[0], pgbouncer, short_dir, "--check")
    if breakage == "no socket":
        haproxy.close()
    elif breakage == "unknown server":
        del haproxy.servers["db2"]
    elif breakage == "leader down":
        haproxy.set("db1", SRV_STOPPED)
    elif breakage == "paused":
        pgbouncer.paused = True
    elif breakage == "wrong password":
        pgbouncer.password = "changed"
    elif breakage == "no pgbouncer":
        pgbouncer.close()
    code, out = run_main(capsys, args)
    assert code == follower.EXIT_REFUSED, out
    assert len(out["problems"]) == 1 and out["problems"][0].startswith(problem), out
    if breakage == "paused":
        assert pgbouncer.paused  # refused, not resumed
    assert haproxy.sets() == []


def test_a_problem_outside_check_mode_refuses_without_following(
    capsys: pytest.CaptureFixture[str],
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    haproxy.close()
    started = time.monotonic()
    code, out = run_main(capsys, argv(haproxy, patroni, pki[0], None, short_dir))
    assert code == follower.EXIT_REFUSED and out["problems"][0].startswith("HAProxy runtime API")
    assert time.monotonic() - started < 5
    assert not patroni["db2"].calls


def test_the_console(pgbouncer: FakePgBouncer, short_dir: str) -> None:
    console = follower.Console(pgbouncer.conninfo(pgbouncer.write_passfile(os.path.join(short_dir, "pgpass"))))
    assert console.state() == {"active": True, "paused": False, "suspended": False}
    # Not paused: PgBouncer's error, which still means "running".
    assert console.resume() == (True, "")
    pgbouncer.paused = True
    assert console.state() == {"active": False, "paused": True, "suspended": False}
    assert console.resume() == (True, "")
    assert not pgbouncer.paused
    pgbouncer.paused = True
    pgbouncer.resume_error = "admin access needed"
    assert console.resume() == (False, "admin access needed")
    assert pgbouncer.paused


def test_an_unexpected_error_still_resumes(
    capsys: pytest.CaptureFixture[str],
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    clock = Clock()
    console = Console(clock)
    calls = {"n": 0}

    def state() -> t.Dict[str, bool]:
        calls["n"] += 1
        if calls["n"] > 1:  # the check's call passes, the follow loop's does not
            raise RuntimeError("a bug")
        return {"active": True, "paused": False, "suspended": False}

    console.state = state  # type: ignore[method-assign]
    args = argv(haproxy, patroni, pki[0], None, short_dir, "--pgbouncer", "host=127.0.0.1")
    code = follower.main(args, connect=lambda conninfo: console)
    out = json.loads(capsys.readouterr().out)
    assert code == follower.EXIT_FAILED
    assert out["error"] == "follower failed: RuntimeError: a bug"
    assert len(console.resumes) == 1 and out["resumed"] is True


def start_program(args: t.List[str]) -> subprocess.Popen[str]:
    """The follower as the role starts it: its own process, its own interpreter run."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until_following(haproxy: FakeHAProxy, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the program reads HAProxy in its loop (its first read, then the loop's).

    Its start-up takes a while on a loaded machine.
    """
    deadline = time.monotonic() + timeout
    while len(haproxy.commands) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the follower did not start"
        time.sleep(0.02)


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> t.Tuple[int, t.Dict[str, t.Any]]:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert stdout, stderr
    return proc.returncode, json.loads(stdout)


def test_the_program_follows_a_switchover(
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pgbouncer: FakePgBouncer,
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    proc = start_program(argv(haproxy, patroni, pki[0], pgbouncer, short_dir, "--force"))
    wait_until_following(haproxy, proc)
    # The role pauses PgBouncer, then Patroni moves the leader: the lock
    # first (200 while still promoting), the promotion a little later.
    pgbouncer.paused = True
    time.sleep(0.3)
    patroni["db2"].take_lock()
    time.sleep(0.4)
    moved_at = time.time()
    patroni["db1"].demote()
    patroni["db2"].promote()
    code, out = finish(proc)
    assert code == follower.EXIT_DONE, out
    assert not pgbouncer.paused
    (resume_at,) = pgbouncer.commands("RESUME")
    assert resume_at >= moved_at
    assert out["patroni_confirmed_at"] >= round(moved_at, 3) - 0.001
    assert haproxy.sets() == [
        "set server postgres_primary/db2 health up",
        "set server postgres_primary/db1 health down",
    ]
    assert out["forced"] == ["db2 up", "db1 down"]
    assert out["resumed"] is True
    # PAUSE 0.7 s before the promotion; the follower saw it within its 0.05 s reads.
    assert 0.5 < out["stall"] < 5 and out["stall"] == pytest.approx(out["resumed_at"] - out["paused_at"], abs=0.002)
    assert out["servers"]["db2"]["usable"] and not out["servers"]["db1"]["usable"]


def test_the_program_resumes_at_its_deadline_when_the_controller_is_lost(
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pgbouncer: FakePgBouncer,
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    args = argv(haproxy, patroni, pki[0], pgbouncer, short_dir, "--force")
    args[args.index("--timeout") + 1] = "2"
    proc = start_program(args)
    wait_until_following(haproxy, proc)
    pgbouncer.paused = True  # ... and nothing more happens
    code, out = finish(proc)
    assert code == follower.EXIT_FAILED
    assert not pgbouncer.paused
    assert out["resumed"] is True
    # At its deadline, 2 s after its own start.
    assert 2.0 <= out["resumed_at"] - out["started_at"] < 10
    assert haproxy.sets() == []  # no verdict, nothing forced


def test_the_program_stops_when_the_role_says_so(
    haproxy: FakeHAProxy,
    patroni: t.Dict[str, FakePatroni],
    pgbouncer: FakePgBouncer,
    pki: t.Tuple[str, str, str],
    short_dir: str,
) -> None:
    proc = start_program(argv(haproxy, patroni, pki[0], pgbouncer, short_dir))
    wait_until_following(haproxy, proc)
    pgbouncer.paused = True
    threading.Timer(0.5, lambda: Path(short_dir, "stop").touch()).start()
    code, out = finish(proc)
    assert code == follower.EXIT_STOPPED, out
    assert pgbouncer.paused and not pgbouncer.commands("RESUME")  # the role resumes


def test_patroni_is_verified_with_the_ca(
    patroni: t.Dict[str, FakePatroni], pki: t.Tuple[str, str, str], tmp_path: Path
) -> None:
    patroni["db2"].promote()
    right = ssl.create_default_context(cafile=pki[0])
    assert follower.patroni_primary(patroni["db2"].url, right, 1.0) == (200, "primary", "running")
    assert follower.patroni_primary(patroni["db1"].url, right, 1.0) == (200, "primary", "running")
    patroni["db1"].demote()
    assert follower.patroni_primary(patroni["db1"].url, right, 1.0) == (503, "replica", "running")
    other_ca = make_pki(str(tmp_path))[0]
    wrong = ssl.create_default_context(cafile=other_ca)
    assert follower.patroni_primary(patroni["db2"].url, wrong, 1.0) == (None, None, None)
