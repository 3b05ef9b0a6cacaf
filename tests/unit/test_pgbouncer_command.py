# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""pgbouncer_command: command building, state parsing and the idempotency decisions.

A real PgBouncer is exercised in Molecule; here the console is a small fake
that answers like PgBouncer's admin.c (rows and error texts).
"""

from __future__ import annotations

import typing as t

import pytest
from ansible_collections.neurondb.ha.plugins.module_utils import pgbouncer
from ansible_collections.neurondb.ha.plugins.modules import pgbouncer_command

psycopg = pytest.importorskip("psycopg")


@pytest.mark.parametrize(
    ("name", "quoted"),
    [("appdb", "appdb"), ("app_db2", "app_db2"), ("App", '"App"'), ("app-db", '"app-db"'), ('a"b', '"a""b"')],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert pgbouncer.quote_ident(name) == quoted


@pytest.mark.parametrize("name", ["", "a\nb", "a\x00"])
def test_quote_ident_rejects_control_characters(name: str) -> None:
    with pytest.raises(ValueError):
        pgbouncer.quote_ident(name)


def test_build_command() -> None:
    assert pgbouncer.build_command("pause") == "PAUSE"
    assert pgbouncer.build_command("resume", "app-db") == 'RESUME "app-db"'
    assert pgbouncer.build_command("wait_close", "appdb") == "WAIT_CLOSE appdb"
    assert pgbouncer.build_command("show", show="pools") == "SHOW POOLS"
    with pytest.raises(ValueError, match="takes no database"):
        pgbouncer.build_command("reload", "appdb")
    with pytest.raises(ValueError, match="SHOW needs one of"):
        pgbouncer.build_command("show", show="fds")
    with pytest.raises(ValueError, match="unsupported"):
        pgbouncer.build_command("shutdown")


def test_parse_state_and_paused_databases() -> None:
    state = pgbouncer.parse_state(
        [{"key": "active", "value": "no"}, {"key": "paused", "value": "yes"}, {"key": "suspended", "value": "no"}]
    )
    assert state == {"active": False, "paused": True, "suspended": False}
    rows = [{"name": "appdb", "paused": 1}, {"name": "other", "paused": 0}, {"name": "pgbouncer", "paused": 0}]
    assert pgbouncer.paused_databases(rows) == {"appdb"}


RUNNING = {"active": True, "paused": False, "suspended": False}
PAUSED = {"active": False, "paused": True, "suspended": False}
SUSPENDED = {"active": False, "paused": False, "suspended": True}


@pytest.mark.parametrize(
    ("command", "database", "state", "paused", "verdict"),
    [
        ("pause", None, RUNNING, None, "run"),
        ("pause", None, PAUSED, None, "skip"),
        ("pause", None, SUSPENDED, None, "fail"),
        ("pause", None, None, None, "run"),  # no SHOW STATE: run, read the error
        ("pause", "appdb", RUNNING, {"appdb"}, "skip"),
        ("pause", "appdb", RUNNING, set(), "run"),
        ("pause", "appdb", PAUSED, set(), "skip"),  # globally paused covers it
        ("resume", None, RUNNING, None, "skip"),
        ("resume", None, PAUSED, None, "run"),
        ("resume", None, SUSPENDED, None, "run"),
        ("resume", "appdb", RUNNING, set(), "skip"),
        ("resume", "appdb", RUNNING, {"appdb"}, "run"),
        ("reconnect", None, RUNNING, None, "run"),
    ],
)
def test_decide(
    command: str, database: str | None, state: t.Dict[str, bool] | None, paused: t.Set[str] | None, verdict: str
) -> None:
    assert pgbouncer.decide(command, database, state, paused)[0] == verdict


def test_already_done_errors() -> None:
    assert pgbouncer.already_done("pause", "already suspended/paused")
    assert pgbouncer.already_done("resume", "pooler is not paused/suspended")
    assert pgbouncer.already_done("resume", "database appdb is not paused")
    assert not pgbouncer.already_done("pause", "admin access needed")


# -- module flow against a fake console ------------------------------------------------------


class FakeConsole:
    """Enough of PgBouncer's admin console for PAUSE/RESUME/SHOW."""

    def __init__(self, has_show_state: bool = True) -> None:
        self.has_show_state = has_show_state
        self.mode = "none"  # none | pause | suspend
        self.paused_dbs: t.Set[str] = set()
        self.queries: t.List[str] = []
        self.description: t.Any = None
        self._rows: t.List[t.Dict[str, t.Any]] = []

    # connection
    def __enter__(self) -> FakeConsole:
        return self

    def __exit__(self, *exc: t.Any) -> None:
        pass

    def cursor(self) -> FakeConsole:
        return self

    # cursor
    def fetchall(self) -> t.List[t.Dict[str, t.Any]]:
        return self._rows

    def execute(self, query: str) -> None:
        self.queries.append(query)
        self._rows, self.description = [], None
        words = query.split()
        if query == "SHOW STATE":
            if not self.has_show_state:
                raise psycopg.Error("invalid command 'SHOW STATE', use SHOW HELP;")
            self._answer(
                [
                    {"key": "active", "value": "yes" if self.mode == "none" else "no"},
                    {"key": "paused", "value": "yes" if self.mode == "pause" else "no"},
                    {"key": "suspended", "value": "yes" if self.mode == "suspend" else "no"},
                ]
            )
        elif query == "SHOW DATABASES":
            self._answer(
                [
                    {"name": n, "host": "10.0.0.1", "port": 5432, "paused": int(n in self.paused_dbs)}
                    for n in ("appdb", "pgbouncer")
                ]
            )
        elif query == "SHOW POOLS":
            self._answer([{"database": "appdb", "user": "app", "cl_active": 3, "cl_waiting": 0}])
        elif words[0] == "PAUSE":
            if self.mode != "none":
                raise psycopg.Error("already suspended/paused")
            if len(words) == 1:
                self.mode = "pause"
            else:
                self.paused_dbs.add(words[1])
        elif words[0] == "RESUME":
            if len(words) == 1:
                if self.mode == "none":
                    raise psycopg.Error("pooler is not paused/suspended")
                self.mode = "none"
            elif words[1] not in self.paused_dbs:
                raise psycopg.Error(f"database {words[1]} is not paused")
            else:
                self.paused_dbs.discard(words[1])
        elif words[0] in ("RECONNECT", "RELOAD", "WAIT_CLOSE"):
            pass
        else:
            raise psycopg.Error(f"invalid command '{query}', use SHOW HELP;")

    def _answer(self, rows: t.List[t.Dict[str, t.Any]]) -> None:
        self._rows, self.description = rows, [("column",)]


@pytest.fixture
def console(monkeypatch: pytest.MonkeyPatch) -> FakeConsole:
    fake = FakeConsole()
    monkeypatch.setattr(pgbouncer_command, "connect", lambda params: fake)
    return fake


def test_show_returns_rows(console: FakeConsole, run_module: t.Any) -> None:
    result, failed = run_module(pgbouncer_command.main, {"command": "show", "show": "pools"})
    assert not failed and result["changed"] is False
    assert result["rows"] == [{"database": "appdb", "user": "app", "cl_active": 3, "cl_waiting": 0}]
    assert result["query"] == "SHOW POOLS"


def test_pause_database_is_idempotent(console: FakeConsole, run_module: t.Any) -> None:
    result, failed = run_module(pgbouncer_command.main, {"command": "pause", "database": "appdb"})
    assert not failed and result["changed"] is True and result["query"] == "PAUSE appdb"
    assert console.paused_dbs == {"appdb"}
    result, failed = run_module(pgbouncer_command.main, {"command": "pause", "database": "appdb"})
    assert not failed and result["changed"] is False
    assert result["msg"] == "database appdb is already paused"
    assert console.queries.count("PAUSE appdb") == 1


def test_global_pause_and_resume(console: FakeConsole, run_module: t.Any) -> None:
    steps = [
        ("pause", True, "ran PAUSE"),
        ("pause", False, "PgBouncer is already paused"),
        ("resume", True, "ran RESUME"),
        ("resume", False, "PgBouncer is not paused"),
    ]
    for command, changed, msg in steps:
        result, failed = run_module(pgbouncer_command.main, {"command": command})
        assert not failed and (result["changed"], result["msg"]) == (changed, msg)
        assert result["state"]["paused"] is (console.mode == "pause")
    assert console.queries.count("PAUSE") == 1 and console.queries.count("RESUME") == 1


def test_without_show_state_the_console_error_means_no_change(console: FakeConsole, run_module: t.Any) -> None:
    console.has_show_state = False
    console.mode = "pause"
    result, failed = run_module(pgbouncer_command.main, {"command": "pause"})
    assert not failed and result["changed"] is False
    assert result["msg"] == "no change: already suspended/paused"


def test_suspended_pooler_is_not_paused(console: FakeConsole, run_module: t.Any) -> None:
    console.mode = "suspend"
    result, failed = run_module(pgbouncer_command.main, {"command": "pause"})
    assert failed and "suspended" in result["msg"]
    assert "PAUSE" not in console.queries


def test_check_mode_runs_no_state_changing_command(console: FakeConsole, run_module: t.Any) -> None:
    for args in ({"command": "pause"}, {"command": "reconnect"}, {"command": "reload"}):
        result, failed = run_module(pgbouncer_command.main, args, check_mode=True)
        assert not failed and result["changed"] is True and result["msg"].startswith("would run")
    assert [q for q in console.queries if not q.startswith("SHOW")] == []


def test_console_errors_fail_with_context(console: FakeConsole, run_module: t.Any) -> None:
    result, failed = run_module(pgbouncer_command.main, {"command": "resume", "database": "x y"})
    assert not failed and result["changed"] is False  # not paused: nothing to do

    def refuse(query: str) -> None:
        raise psycopg.Error("admin access needed")

    console.execute = refuse  # type: ignore[method-assign]
    result, failed = run_module(pgbouncer_command.main, {"command": "reload", "login_password": "pw"})
    assert failed
    assert result["msg"] == "PgBouncer at 127.0.0.1:6432 (RELOAD): admin access needed"


def test_show_requires_what(run_module: t.Any) -> None:
    result, failed = run_module(pgbouncer_command.main, {"command": "show"})
    assert failed and "show" in result["msg"]


def test_connect_uses_simple_protocol_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: t.Dict[str, t.Any] = {}
    monkeypatch.setattr(psycopg, "connect", lambda **kw: seen.update(kw))
    params = {
        "login_host": "/run/pgbouncer",
        "port": 6432,
        "login_user": "pgbouncer",
        "login_password": None,
        "ssl_mode": "disable",
        "ca_cert": None,
        "connect_timeout": 3,
    }
    pgbouncer_command.connect(params)
    assert seen["dbname"] == "pgbouncer" and seen["autocommit"] is True
    assert seen["cursor_factory"] is psycopg.ClientCursor and seen["prepare_threshold"] is None
    assert "password" not in seen and seen["host"] == "/run/pgbouncer"


# community.postgresql's option names; login_port, the name port had before, is their alias too.
@pytest.mark.parametrize("port_option", ["port", "login_port"])
def test_connection_options_and_port_alias(
    monkeypatch: pytest.MonkeyPatch, run_module: t.Any, port_option: str
) -> None:
    seen: t.Dict[str, t.Any] = {}
    fake = FakeConsole()

    def fake_connect(**kwargs: t.Any) -> FakeConsole:
        seen.update(kwargs)
        return fake

    monkeypatch.setattr(psycopg, "connect", fake_connect)
    args = {
        "command": "show",
        "show": "pools",
        "login_host": "10.0.0.5",
        port_option: 6543,
        "login_user": "pgbouncer_admin",
        "login_password": "pw",
        "ssl_mode": "verify-ca",
        "ca_cert": "/etc/pgbouncer/ca.pem",
        "connect_timeout": 4,
    }
    result, failed = run_module(pgbouncer_command.main, args)
    assert not failed and result["query"] == "SHOW POOLS"
    assert {k: seen[k] for k in ("host", "port", "user", "password", "dbname", "sslmode", "sslrootcert")} == {
        "host": "10.0.0.5",
        "port": 6543,
        "user": "pgbouncer_admin",
        "password": "pw",
        "dbname": "pgbouncer",
        "sslmode": "verify-ca",
        "sslrootcert": "/etc/pgbouncer/ca.pem",
    }
    assert seen["connect_timeout"] == 4

    def refuse(query: str) -> None:
        raise psycopg.Error("admin access needed")

    fake.execute = refuse  # type: ignore[method-assign]
    result, failed = run_module(pgbouncer_command.main, dict(args, command="reload"))
    assert failed and result["msg"] == "PgBouncer at 10.0.0.5:6543 (RELOAD): admin access needed"


def test_connection_defaults(monkeypatch: pytest.MonkeyPatch, run_module: t.Any) -> None:
    seen: t.Dict[str, t.Any] = {}
    monkeypatch.setattr(psycopg, "connect", lambda **kw: seen.update(kw) or FakeConsole())
    result, failed = run_module(pgbouncer_command.main, {"command": "show", "show": "pools"})
    assert not failed, result["msg"]
    assert (seen["host"], seen["port"], seen["user"], seen["sslmode"], seen["connect_timeout"]) == (
        "127.0.0.1",
        6432,
        "pgbouncer",
        "prefer",
        10,
    )
    assert "password" not in seen and "sslrootcert" not in seen
