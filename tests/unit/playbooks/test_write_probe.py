# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The drills' write probe (playbooks/files/write_probe.py): its bookkeeping.

The connection is a fake: what is tested is what the probe records of each
attempt, that it reconnects after a failed one, and the summary and status
the drills compute their figures from (a real PostgreSQL behind PgBouncer is
the Molecule drill scenario's part).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import typing as t
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

SCRIPT = Path(__file__).resolve().parents[3] / "playbooks" / "files" / "write_probe.py"


def load_probe() -> t.Any:
    spec = importlib.util.spec_from_file_location("write_probe", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


write_probe = load_probe()


class FakeConnection:
    """Enough of psycopg.Connection for Probe.attempt; fails when told to."""

    def __init__(self, log: t.List[str], fail_on: t.Set[int]) -> None:
        self.log = log
        self.fail_on = fail_on
        self.closed = False

    @contextlib.contextmanager
    def transaction(self) -> t.Iterator[None]:
        yield

    def execute(self, query: str, params: t.Tuple[t.Any, ...] = ()) -> None:
        if query.startswith("INSERT"):
            probe_id = params[1]
            self.log.append(f"insert {probe_id}")
            if probe_id in self.fail_on:
                raise write_probe.psycopg.OperationalError(
                    "consuming input failed: server closed the connection unexpectedly\n\tThis probably means..."
                )

    def close(self) -> None:
        self.closed = True
        self.log.append("close")


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> t.Any:
    env = tmp_path / "neuronagent.env"
    env.write_text('DB_HOST=127.0.0.1\nDB_PASSWORD="app pass \\"quoted\\""\n')
    monkeypatch.delenv("PGPASSWORD", raising=False)
    args = argparse.Namespace(
        host="127.0.0.1",
        port=6432,
        dbname="neurondb",
        user="neurondb_app",
        password_env_file=str(env),
        run_id="switchover-20261204T000000Z",
        rate=20.0,
        duration=1.0,
        stop_file="",
        timeout_ms=1500,
        out=str(tmp_path / "probe.json"),
        status=str(tmp_path / "status.json"),
    )
    return write_probe.Probe(args)


def connect_with(probe: t.Any, fail_on: t.Set[int], refuse: t.Set[int] | None = None) -> t.List[str]:
    """Make probe.connect hand out fake connections; `refuse` counts connects that fail."""
    log: t.List[str] = []
    connects = {"n": 0}

    def connect() -> FakeConnection:
        connects["n"] += 1
        log.append(f"connect {connects['n']}")
        if connects["n"] in (refuse or set()):
            raise write_probe.psycopg.OperationalError("connection failed: Connection refused")
        return FakeConnection(log, fail_on)

    probe.connect = connect
    return log


def test_reads_the_password_of_the_env_file(probe: t.Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert probe.password == 'app pass "quoted"'
    plain = tmp_path / "plain.env"
    plain.write_text("DB_PASSWORD=plain\n")
    assert write_probe.read_password(str(plain)) == "plain"
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert write_probe.read_password(str(plain)) == "from-env"
    monkeypatch.delenv("PGPASSWORD")
    (tmp_path / "none.env").write_text("DB_HOST=x\n")
    with pytest.raises(SystemExit, match="no DB_PASSWORD"):
        write_probe.read_password(str(tmp_path / "none.env"))


def test_reconnects_after_a_failed_attempt(probe: t.Any) -> None:
    log = connect_with(probe, fail_on={2})
    results = [probe.attempt(i) for i in (1, 2, 3, 4)]
    assert [r["ok"] for r in results] == [True, False, True, True]
    # One connection until the failure, closed then, a new one for the next attempt.
    assert log == ["connect 1", "insert 1", "insert 2", "close", "connect 2", "insert 3", "insert 4"]
    failed = results[1]
    assert failed["error"] == "OperationalError: consuming input failed: server closed the connection unexpectedly"
    assert failed["failed"] >= failed["sent"] and "acked" not in failed


def test_a_refused_connection_is_a_failed_attempt_and_the_next_one_tries_again(probe: t.Any) -> None:
    log = connect_with(probe, fail_on=set(), refuse={1, 2})
    results = [probe.attempt(i) for i in (1, 2, 3)]
    assert [r["ok"] for r in results] == [False, False, True]
    assert results[0]["error"] == "OperationalError: connection failed: Connection refused"
    assert log == ["connect 1", "connect 2", "connect 3", "insert 3"]


def test_summary_and_status(probe: t.Any) -> None:
    connect_with(probe, fail_on={3})
    probe.attempts = [probe.attempt(i) for i in (1, 2, 3, 4, 5)]
    # A stall between 2 and 4 (3 failed in between): made explicit.
    probe.attempts[1]["acked"] = 100.0
    probe.attempts[3]["acked"] = 103.5
    probe.attempts[0]["acked"], probe.attempts[4]["acked"] = 99.9, 103.6
    summary = probe.summary()
    assert summary["run_id"] == "switchover-20261204T000000Z"
    assert summary["target"] == "127.0.0.1:6432/neurondb"
    assert (summary["attempts"], summary["acked"], summary["failed"]) == (5, 4, 1)
    assert summary["acked_ids"] == [1, 2, 4, 5]
    assert [a[0] for a in summary["acks"]] == [1, 2, 4, 5] and summary["acks"][2][2] == 103.5
    assert summary["failures"] == [[3, round(probe.attempts[2]["sent"], 3), probe.attempts[2]["error"]]]
    probe.write_status(104.0)
    status = json.loads(Path(probe.args.status).read_text())
    assert status["gap"] == pytest.approx(3.5) and status["gap_end"] == 103.5
    assert status["last_ok"] == 103.6 and status["last_attempt_ok"] is True
    assert status["last_failed"] == probe.attempts[2]["failed"]
    assert (status["attempts"], status["acked"], status["failed"]) == (5, 4, 1)


def test_run_stops_at_the_stop_file(probe: t.Any, tmp_path: Path) -> None:
    connect_with(probe, fail_on=set())
    stop = tmp_path / "stop"
    probe.args.stop_file = str(stop)
    probe.args.duration = 30.0
    attempt = probe.attempt

    def attempt_then_stop(probe_id: int) -> t.Dict[str, t.Any]:
        if probe_id == 3:
            stop.touch()
        return attempt(probe_id)

    probe.attempt = attempt_then_stop
    probe.run()
    assert [a["id"] for a in probe.attempts] == [1, 2, 3]
