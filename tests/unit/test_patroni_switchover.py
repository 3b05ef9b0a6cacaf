# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""patroni_switchover: pre-flight decisions and the full switchover against the fake cluster."""

from __future__ import annotations

import typing as t

import pytest
from ansible_collections.neurondb.ha.plugins.module_utils.patroni import parse_cluster
from ansible_collections.neurondb.ha.plugins.modules import patroni_switchover
from fake_patroni import FakeCluster


@pytest.fixture
def args(api_args: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    return dict(api_args, wait_timeout=5, poll_interval=0.05)


def posts(cluster: FakeCluster) -> t.List[t.Tuple[str, str, str, t.Any]]:
    return cluster.calls("POST", "/switchover")


def test_switchover_to_candidate(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", leader="db1"))
    assert not failed, result["msg"]
    assert result["changed"] is True
    assert (result["old_leader"], result["new_leader"], result["timeline"]) == ("db1", "db2", 4)
    assert isinstance(result["elapsed"], float) and 0.15 < result["elapsed"] < 5
    assert result["patroni_message"] == 'Successfully switched over to "db2"'
    assert result["scheduled"] is False and result["checkpoint"] is False
    # Sent once, to the leader's API, with Patroni's body.
    assert posts(fake_cluster) == [("db1", "POST", "/switchover", {"leader": "db1", "candidate": "db2"})]
    assert fake_cluster.leader == "db2"


def test_candidate_already_leading_is_no_change(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    # After a successful run, the same task again: leader=db1 no longer holds, db2 leads.
    fake_cluster.promote("db2")
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", leader="db1"))
    assert not failed
    assert result["changed"] is False
    assert result["new_leader"] == "db2"
    assert posts(fake_cluster) == []


def test_picks_least_lagging_eligible_replica(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].set_lag(5000)
    fake_cluster.members["db3"].set_lag(10)
    result, failed = run_module(patroni_switchover.main, args, check_mode=True)
    assert not failed
    assert result["changed"] is True and result["would_switch_to"] == "db3"
    assert result["candidates"] == {"db2": [], "db3": []}
    assert posts(fake_cluster) == []
    assert fake_cluster.leader == "db1"

    result, failed = run_module(patroni_switchover.main, args)
    assert not failed and result["new_leader"] == "db3"
    assert posts(fake_cluster)[0][3] == {"leader": "db1", "candidate": "db3"}


def test_check_mode_with_candidate_changes_nothing(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db3"), check_mode=True)
    assert not failed
    assert result["would_switch_to"] == "db3" and result["changed"] is True
    assert posts(fake_cluster) == [] and fake_cluster.leader == "db1"


@pytest.mark.parametrize(
    ("setup", "candidate", "reason"),
    [
        (lambda c: setattr(c, "paused", True), "db2", "maintenance mode (paused)"),
        (
            lambda c: setattr(c, "scheduled", {"at": "2030-01-01T00:00:00+00:00", "from": "db1", "to": "db3"}),
            "db2",
            "a switchover is already scheduled",
        ),
        (lambda c: c.members["db2"].set_lag(2 * 1048576), "db2", "2097152 bytes behind (max 1048576)"),
        (lambda c: c.members["db2"].set_lag("unknown"), "db2", "lag unknown"),
        (lambda c: c.members["db2"].tags.update(nofailover=True), "db2", "tagged nofailover"),
        (lambda c: c.members["db2"].tags.update(failover_priority=0), "db2", "failover_priority <= 0"),
        (lambda c: setattr(c.members["db2"], "state", "starting"), "db2", "state is starting, not streaming"),
        (lambda c: setattr(c.members["db2"], "timeline", 2), "db2", "on timeline 2, the leader on 3"),
        (lambda c: (c.config or {}).update(synchronous_mode=True), "db2", "not a synchronous standby"),
        (lambda c: None, "db7", "candidate db7 is not a member"),
        (lambda c: setattr(c, "leader", None), "db2", "the cluster has no leader"),
    ],
)
def test_refusals_change_nothing(
    fake_cluster: FakeCluster,
    args: t.Dict[str, t.Any],
    run_module: t.Any,
    setup: t.Callable[[FakeCluster], None],
    candidate: str,
    reason: str,
) -> None:
    if candidate:
        args = dict(args, candidate=candidate)
    if reason == "the cluster has no leader":
        fake_cluster.members["db1"].role = "replica"
    setup(fake_cluster)
    for check_mode in (True, False):
        result, failed = run_module(patroni_switchover.main, args, check_mode=check_mode)
        assert failed and result["changed"] is False
        assert result["msg"].startswith("Switchover refused: ")
        assert reason in result["msg"]
    assert posts(fake_cluster) == []


def test_sync_standby_is_eligible_in_synchronous_mode(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    assert fake_cluster.config is not None
    fake_cluster.config["synchronous_mode"] = True
    fake_cluster.members["db3"].tags["sync"] = True  # the fake reports it as sync_standby
    result, failed = run_module(patroni_switchover.main, args, check_mode=True)
    assert not failed and result["would_switch_to"] == "db3"
    assert result["candidates"]["db2"] == ["not a synchronous standby (synchronous_mode is on)"]


def test_unexpected_leader_is_refused(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_switchover.main, dict(args, leader="db3", candidate="db2"))
    assert failed and "db1 leads, not db3 as expected" in result["msg"]
    assert posts(fake_cluster) == []


def test_no_eligible_replica_lists_reasons(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].state = "stopped"
    fake_cluster.members["db3"].tags["nofailover"] = "true"
    result, failed = run_module(patroni_switchover.main, args)
    assert failed
    assert "no replica is eligible (db2: state is stopped, not streaming; db3: tagged nofailover)" in result["msg"]
    assert result["candidates"] == {"db2": ["state is stopped, not streaming"], "db3": ["tagged nofailover"]}


def test_status_unknown_is_resolved_by_watching_the_cluster(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.switchover_outcome = "status_unknown"
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db3"))
    assert not failed, result["msg"]
    assert result["changed"] is True and result["new_leader"] == "db3" and result["timeline"] == 4
    assert "HTTP 503: Switchover status unknown" in result["patroni_message"]
    assert len(posts(fake_cluster)) == 1  # never re-sent


def test_status_unknown_without_new_leader_fails(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.switchover_outcome = "status_unknown"
    fake_cluster.switchover_delay = 30  # the lock will not move while we watch
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db3", wait_timeout=1))
    assert failed and result["changed"] is False
    assert "Switchover outcome unknown" in result["msg"]
    assert "waiting for a new running leader other than db1" in result["msg"]
    assert "may still be pending" in result["msg"]


def test_switchover_failed_answer_fails_without_change(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.switchover_outcome = "failed"
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2"))
    assert failed and result["changed"] is False
    assert result["msg"].endswith("HTTP 503: Switchover failed")
    assert result["error"]["member"] == "db1" and result["error"]["endpoint"] == "/switchover"
    assert fake_cluster.leader == "db1"


def test_other_member_promoted_is_reported_as_failure(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.switchover_outcome = "other_leader"
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2"))
    assert failed and result["changed"] is True
    assert result["new_leader"] == "db3"
    assert "promoted db3 instead of the requested db2" in result["msg"]


def test_wrong_password_is_reported(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", api_password="nope"))
    assert failed and result["changed"] is False
    assert result["error"]["status"] == 401
    assert "POST /switchover on member db1" in result["msg"]
    assert "not authenticated" in result["msg"]
    assert fake_cluster.leader == "db1"


def test_scheduled_switchover_is_idempotent(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    when = "2030-01-10T02:00:00+00:00"
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", scheduled_at=when))
    assert not failed and result["changed"] is True
    assert result["scheduled"] is True and result["scheduled_at"] == when
    assert result["patroni_message"] == "Switchover scheduled"
    assert fake_cluster.scheduled == {"at": when, "from": "db1", "to": "db2"}

    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", scheduled_at=when))
    assert not failed and result["changed"] is False
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db3", scheduled_at=when))
    assert failed and "already scheduled" in result["msg"]
    assert len(posts(fake_cluster)) == 1


def test_scheduled_at_needs_a_time_zone(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_switchover.main, dict(args, scheduled_at="2030-01-10T02:00:00"))
    assert failed and "has no time zone" in result["msg"]
    assert posts(fake_cluster) == []


def test_checkpoint_failure_stops_before_switchover(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: t.List[t.Dict[str, t.Any]] = []

    def failing_checkpoint(conninfo: t.Dict[str, t.Any]) -> None:
        calls.append(conninfo)
        raise OSError("connection refused")

    monkeypatch.setattr(patroni_switchover, "run_checkpoint", failing_checkpoint)
    result, failed = run_module(
        patroni_switchover.main, dict(args, candidate="db2", checkpoint=True, db_password="secret")
    )
    assert failed and result["changed"] is False
    assert result["msg"] == "CHECKPOINT on the leader (127.0.0.1:5432/postgres as postgres) failed: connection refused"
    assert calls[0]["password"] == "secret"
    assert posts(fake_cluster) == []


def test_checkpoint_runs_before_switchover(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: t.List[str] = []
    monkeypatch.setattr(patroni_switchover, "run_checkpoint", lambda c: order.append(f"checkpoint {c['host']}"))
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", checkpoint=True))
    assert not failed and result["checkpoint"] is True
    assert order == ["checkpoint 127.0.0.1"] and fake_cluster.leader == "db2"


# community.postgresql's option names, and the db_* names of earlier releases as aliases.
NEW_CONNECTION_NAMES = {
    "login_host": "/run/postgresql",
    "port": 6000,
    "login_user": "admin",
    "login_password": "secret",
    "login_db": "ops",
    "ssl_mode": "verify-full",
    "ca_cert": "/etc/postgresql/ca.pem",
    "connect_timeout": 3,
}
OLD_CONNECTION_NAMES = {
    "db_host": "/run/postgresql",
    "db_port": 6000,
    "db_user": "admin",
    "db_password": "secret",
    "db_name": "ops",
    "db_sslmode": "verify-full",
    "db_sslrootcert": "/etc/postgresql/ca.pem",
    "db_connect_timeout": 3,
}


@pytest.mark.parametrize("connection", [NEW_CONNECTION_NAMES, OLD_CONNECTION_NAMES], ids=["names", "aliases"])
def test_checkpoint_connection_options_and_aliases(
    fake_cluster: FakeCluster,
    args: t.Dict[str, t.Any],
    run_module: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    connection: t.Dict[str, t.Any],
) -> None:
    seen: t.List[t.Dict[str, t.Any]] = []
    monkeypatch.setattr(patroni_switchover, "run_checkpoint", seen.append)
    result, failed = run_module(patroni_switchover.main, {**args, **connection, "candidate": "db2", "checkpoint": True})
    assert not failed, result["msg"]
    assert seen == [
        {
            "host": "/run/postgresql",
            "port": 6000,
            "user": "admin",
            "password": "secret",
            "dbname": "ops",
            "sslmode": "verify-full",
            "sslrootcert": "/etc/postgresql/ca.pem",
            "connect_timeout": 3,
            "application_name": "neurondb.ha",
        }
    ]


def test_checkpoint_connection_defaults(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: t.List[t.Dict[str, t.Any]] = []
    monkeypatch.setattr(patroni_switchover, "run_checkpoint", seen.append)
    result, failed = run_module(patroni_switchover.main, dict(args, candidate="db2", checkpoint=True, login_port=6001))
    assert not failed, result["msg"]
    # The leader's host from /cluster; login_port is community.postgresql's alias of port.
    assert seen == [
        {
            "host": "127.0.0.1",
            "port": 6001,
            "user": "postgres",
            "dbname": "postgres",
            "sslmode": "prefer",
            "connect_timeout": 10,
            "application_name": "neurondb.ha",
        }
    ]


def test_standby_leader_switchover_does_not_wait_for_new_timeline() -> None:
    cluster = parse_cluster(
        {
            "members": [
                {"name": "s1", "role": "standby_leader", "state": "running", "timeline": 7},
                {"name": "s2", "role": "replica", "state": "streaming", "timeline": 7, "lag": 0},
            ]
        }
    )
    decision = patroni_switchover.plan(
        cluster, {}, candidate=None, expected_leader=None, max_lag_bytes=None, scheduled_at=None
    )
    assert decision["action"] == "switchover" and decision["candidate"]["name"] == "s2"
    assert patroni_switchover.switchover_http_timeout({"loop_wait": 30}, 10) == 75
    assert patroni_switchover.switchover_http_timeout({}, 10) == 35
