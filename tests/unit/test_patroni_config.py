# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""patroni_config: desired-state diffing, PATCH /config and rolling restarts."""

from __future__ import annotations

import typing as t

import pytest
from ansible_collections.neurondb.ha.plugins.modules import patroni_config
from fake_patroni import FakeCluster


@pytest.fixture
def args(api_args: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    return dict(api_args, poll_interval=0.05, restart_timeout=5)


def patches(cluster: FakeCluster) -> t.List[t.Any]:
    return [r[3] for r in cluster.calls("PATCH", "/config")]


def test_patch_only_what_differs(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    desired = {"loop_wait": 10, "ttl": 40, "postgresql": {"parameters": {"max_connections": "100", "work_mem": "16MB"}}}
    result, failed = run_module(patroni_config.main, dict(args, config=desired), diff=True)
    assert not failed and result["changed"] is True
    assert result["patch"] == {"ttl": 40, "postgresql": {"parameters": {"work_mem": "16MB"}}}
    assert patches(fake_cluster) == [result["patch"]]
    assert fake_cluster.calls("PATCH", "/config")[0][0] == "db1"  # sent to the leader
    assert result["diff"]["before"]["ttl"] == 30
    assert result["diff"]["after"]["ttl"] == 40
    assert result["diff"]["after"]["postgresql"]["parameters"] == {
        "max_connections": 100,
        "wal_level": "replica",
        "hot_standby": "on",
        "work_mem": "16MB",
    }
    assert result["config"] == fake_cluster.config  # Patroni's answer
    assert result["pending_restart"] == [] and result["restarted"] == []

    again, failed = run_module(patroni_config.main, dict(args, config=desired))
    assert not failed and again["changed"] is False and again["patch"] == {}
    assert len(patches(fake_cluster)) == 1


def test_null_removes_a_key(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    desired = {"postgresql": {"parameters": {"hot_standby": None, "not_there": None}}}
    result, failed = run_module(patroni_config.main, dict(args, config=desired))
    assert not failed and result["changed"] is True
    assert result["patch"] == {"postgresql": {"parameters": {"hot_standby": None}}}
    assert fake_cluster.config is not None
    assert "hot_standby" not in fake_cluster.config["postgresql"]["parameters"]
    again, failed = run_module(patroni_config.main, dict(args, config=desired))
    assert not failed and again["changed"] is False


def test_check_mode_does_not_patch(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_config.main, dict(args, config={"ttl": 45}), check_mode=True, diff=True)
    assert not failed and result["changed"] is True
    assert result["config"]["ttl"] == 45 and result["diff"]["before"]["ttl"] == 30
    assert patches(fake_cluster) == []
    assert fake_cluster.config and fake_cluster.config["ttl"] == 30


def test_patch_refused_by_patroni_fails(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(patroni_config.main, dict(args, config={"ttl": 45}, api_password="bad"))
    assert failed and result["changed"] is False
    assert "PATCH /config on member db1" in result["msg"] and "HTTP 401" in result["msg"]
    fake_cluster.patch_status = 409  # Patroni: DCS compare-and-set failed (concurrent change)
    result, failed = run_module(patroni_config.main, dict(args, config={"ttl": 45}))
    assert failed and result["error"]["status"] == 409 and result["error"]["reason"] == "Conflict"


def test_reports_pending_restart(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    fake_cluster.members["db2"].pending_restart = True
    result, failed = run_module(patroni_config.main, args)
    assert not failed and result["changed"] is False
    assert result["pending_restart"] == ["db2"]
    assert fake_cluster.calls("POST", "/restart") == []


def test_restart_pending_replicas_first_then_leader(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    desired = {"postgresql": {"parameters": {"max_connections": 200}}}
    result, failed = run_module(
        patroni_config.main, dict(args, config=desired, restart_pending=True, restart_leader=True, settle_time=1)
    )
    assert not failed, result["msg"]
    assert result["changed"] is True
    assert result["pending_restart"] == ["db1", "db2", "db3"]
    assert result["restarted"] == ["db2", "db3", "db1"]
    assert result["pending_leader"] == ""
    restarts = fake_cluster.calls("POST", "/restart")
    # Each on its own member's API, asking Patroni to restart only if still pending.
    assert [(r[0], r[3]) for r in restarts] == [(n, {"restart_pending": True}) for n in ("db2", "db3", "db1")]
    assert all(m.restarts == 1 and not m.pending_restart for m in fake_cluster.members.values())
    # Each member ran again before the next one restarted.
    assert fake_cluster.events == [
        ("restart", "db2"),
        ("settled", "db2"),
        ("restart", "db3"),
        ("settled", "db3"),
        ("restart", "db1"),
        ("settled", "db1"),
    ]


def test_restart_check_mode_lists_order(fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    fake_cluster.members["db1"].pending_restart = True
    fake_cluster.members["db3"].pending_restart = True
    result, failed = run_module(patroni_config.main, dict(args, restart_pending=True), check_mode=True)
    assert not failed and result["changed"] is True
    assert result["would_restart"] == ["db3"]
    assert result["pending_leader"] == "db1"
    assert fake_cluster.calls("POST", "/restart") == []


def test_leader_is_never_restarted_in_place_unless_asked(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    desired = {"postgresql": {"parameters": {"max_connections": 200}}}
    result, failed = run_module(patroni_config.main, dict(args, config=desired, restart_pending=True, settle_time=1))
    assert not failed, result["msg"]
    assert result["restarted"] == ["db2", "db3"]
    assert result["pending_leader"] == "db1"
    assert [r[0] for r in fake_cluster.calls("POST", "/restart")] == ["db2", "db3"]
    assert fake_cluster.members["db1"].restarts == 0 and fake_cluster.members["db1"].pending_restart


def test_member_no_longer_pending_is_skipped(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cluster.members["db2"].pending_restart = True
    real_order = patroni_config.restart_order

    def order_then_clear(cluster: t.Any, leader: bool = True) -> t.Any:
        members = real_order(cluster, leader)
        fake_cluster.members["db2"].pending_restart = False  # someone else restarted it meanwhile
        return members

    monkeypatch.setattr(patroni_config, "restart_order", order_then_clear)
    result, failed = run_module(patroni_config.main, dict(args, restart_pending=True))
    assert not failed and result["changed"] is False and result["restarted"] == []
    assert len(fake_cluster.calls("POST", "/restart")) == 1  # answered 503 'restart conditions are not satisfied'


def test_restart_that_never_settles_fails_with_progress(
    fake_cluster: FakeCluster, args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].pending_restart = True
    fake_cluster.members["db3"].pending_restart = True
    fake_cluster.restart_settle = 60
    result, failed = run_module(patroni_config.main, dict(args, restart_pending=True, restart_timeout=1))
    assert failed and result["changed"] is True
    assert result["restarted"] == ["db2"]
    assert "db2 to run again without pending restart" in result["msg"]
    assert "db2 replica starting" in result["msg"]


# -- pure parts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "desired", "patch"),
    [
        ({"a": 1}, {"a": "1"}, {}),  # compared by text, as Patroni does
        ({"a": True}, {"a": "on"}, {"a": "on"}),
        ({"a": 1}, {"b": None}, {}),
        ({"a": {"b": 1}}, {"a": None}, {"a": None}),
        ({"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3, "d": 4}}, {"a": {"c": 3, "d": 4}}),
        ({"a": {"b": {"c": 1}}}, {"a": {"b": {"c": None}}}, {"a": {"b": {"c": None}}}),
        (
            {"pg_hba": ["host all all 0.0.0.0/0 md5"]},
            {"pg_hba": ["host all all 0.0.0.0/0 scram-sha-256"]},
            {"pg_hba": ["host all all 0.0.0.0/0 scram-sha-256"]},
        ),
    ],
)
def test_config_patch(current: t.Dict[str, t.Any], desired: t.Dict[str, t.Any], patch: t.Dict[str, t.Any]) -> None:
    assert patroni_config.config_patch(current, desired) == patch


def test_apply_patch_matches_patroni_semantics() -> None:
    current = {"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}}
    after = patroni_config.apply_patch(current, {"ttl": None, "postgresql": {"parameters": {"a": None, "c": 3}}})
    assert after == {"postgresql": {"parameters": {"b": 2, "c": 3}}}
    assert current == {"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}}  # not modified
