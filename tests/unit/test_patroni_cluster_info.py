# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""patroni_cluster_info run in-process against the fake cluster, plus the /cluster parsing."""

from __future__ import annotations

import typing as t

from ansible_collections.neurondb.ha.plugins.module_utils.patroni import (
    member_base_url,
    normalize_member,
    parse_cluster,
    parse_history,
)
from ansible_collections.neurondb.ha.plugins.modules import patroni_cluster_info
from fake_patroni import FakeCluster


def test_reports_leader_members_config_and_history(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db3"].set_lag(2048, 4096)
    fake_cluster.members["db2"].tags = {"nofailover": True}
    result, failed = run_module(patroni_cluster_info.main, api_args)
    assert not failed and result["changed"] is False
    assert result["scope"] == "neurondb"
    assert result["leader"] == "db1"
    assert result["paused"] is False and result["scheduled_switchover"] is None
    by_name = {m["name"]: m for m in result["members"]}
    assert by_name["db1"]["role"] == "leader" and by_name["db1"]["lag"] == 0
    assert by_name["db2"]["nofailover"] is True
    db3 = by_name["db3"]
    assert (db3["role"], db3["state"], db3["timeline"]) == ("replica", "streaming", 3)
    assert (db3["receive_lag"], db3["replay_lag"], db3["lag"]) == (2048, 4096, 4096)
    assert db3["api_url"] == fake_cluster.members["db3"].api_url
    assert result["dcs"] == {
        "ttl": 30,
        "loop_wait": 10,
        "retry_timeout": 10,
        "maximum_lag_on_failover": 1048576,
        "synchronous_mode": False,
    }
    assert result["config"]["postgresql"]["parameters"]["max_connections"] == 100
    assert [h["timeline"] for h in result["history"]] == [1, 2]
    assert result["history"][1]["new_leader"] == "db2"


def test_paused_cluster_with_scheduled_switchover(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.paused = True
    fake_cluster.scheduled = {"at": "2030-01-01T02:00:00+00:00", "from": "db1", "to": "db2"}
    result, failed = run_module(patroni_cluster_info.main, dict(api_args, history=False), check_mode=True)
    assert not failed
    assert result["paused"] is True
    assert result["scheduled_switchover"] == {"at": "2030-01-01T02:00:00+00:00", "from": "db1", "to": "db2"}
    assert result["history"] == []
    assert fake_cluster.calls("GET", "/history") == []


def test_works_while_the_first_member_is_down(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.stop_member("db1")
    result, failed = run_module(patroni_cluster_info.main, api_args)
    assert not failed
    assert result["leader"] == "db1"


def test_fails_naming_endpoint_when_no_member_answers(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.stop()
    result, failed = run_module(patroni_cluster_info.main, dict(api_args, retries=0))
    assert failed
    assert result["msg"].startswith("Patroni API GET /cluster failed: no member answered")
    assert all(f"{url}: connection refused" in result["msg"] for url in fake_cluster.urls)
    assert result["error"]["endpoint"] == "/cluster"


def test_invalid_url_fails_cleanly(run_module: t.Any) -> None:
    result, failed = run_module(patroni_cluster_info.main, {"api_url": ["db1:8008"]})
    assert failed
    assert "not an http(s) URL" in result["msg"]


# -- parsing -------------------------------------------------------------------------


def test_member_with_unknown_lag_and_patroni3_fields() -> None:
    member = normalize_member(
        {
            "name": "db2",
            "role": "replica",
            "state": "running",
            "api_url": "http://10.0.0.2:8008/patroni",
            "host": "10.0.0.2",
            "port": 5432,
            "lag": "unknown",
            "tags": {"nofailover": "true"},
        }
    )
    assert member["lag"] is None and member["receive_lag"] is None and member["replay_lag"] is None
    assert member["timeline"] is None
    assert member["nofailover"] is True


def test_member_lag_from_plain_lag_only() -> None:
    member = normalize_member({"name": "db2", "role": "sync_standby", "state": "streaming", "lag": 123})
    assert member["lag"] == 123
    assert member["is_leader"] is False


def test_failover_priority_zero_excludes_member() -> None:
    member = normalize_member({"name": "db2", "role": "replica", "tags": {"failover_priority": 0}})
    assert member["nofailover"] is True and member["failover_priority"] == 0


def test_standby_leader_counts_as_leader() -> None:
    cluster = parse_cluster({"members": [{"name": "s1", "role": "standby_leader", "state": "running"}]})
    assert cluster["leader"] == "s1"
    assert cluster["members"][0]["lag"] == 0


def test_history_with_and_without_new_leader() -> None:
    events = parse_history(
        [[1, 100, "no recovery target specified", "2025-01-01T00:00:00+00:00"], [2, 200, "x", "t", "db2"]]
    )
    assert events[0] == {
        "timeline": 1,
        "lsn": 100,
        "reason": "no recovery target specified",
        "timestamp": "2025-01-01T00:00:00+00:00",
        "new_leader": None,
    }
    assert events[1]["new_leader"] == "db2"


def test_member_url_prefers_configured_name_over_advertised_ip() -> None:
    member = {"name": "db2", "api_url": "https://10.0.0.2:8008/patroni"}
    configured = ["https://db1.example.com:8008", "https://db2.example.com:8008"]
    assert member_base_url(member, configured) == "https://db2.example.com:8008"
    assert member_base_url({"name": "db9", "api_url": "https://10.0.0.9:8008/patroni"}, configured) == (
        "https://10.0.0.9:8008"
    )
    assert member_base_url(member, ["https://10.0.0.2:8008"]) == "https://10.0.0.2:8008"
