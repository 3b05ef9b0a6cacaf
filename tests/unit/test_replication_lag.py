# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""replication_lag against the fake cluster; the pg_stat_replication path with canned rows."""

from __future__ import annotations

import threading
import typing as t

import pytest
import yaml
from ansible_collections.neurondb.ha.plugins.doc_fragments.postgres import ModuleDocFragment
from ansible_collections.neurondb.ha.plugins.module_utils import postgres
from ansible_collections.neurondb.ha.plugins.modules import replication_lag
from fake_patroni import FakeCluster


def test_all_replicas_within_threshold(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].set_lag(100, 300)
    result, failed = run_module(replication_lag.main, dict(api_args, max_lag_bytes=1024, min_replicas=2))
    assert not failed and result["changed"] is False
    assert result["leader"] == "db1"
    assert result["streaming_replicas"] == 2
    by_name = {r["name"]: r for r in result["replicas"]}
    assert set(by_name) == {"db2", "db3"}
    assert by_name["db2"]["lag_bytes"] == 300  # the replay lag, the larger figure
    assert by_name["db2"]["lag_source"] == "patroni"
    assert by_name["db2"]["lag_seconds"] is None
    assert all(r["within_threshold"] and r["problems"] == [] for r in result["replicas"])


def test_names_each_lagging_or_broken_replica(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].set_lag(5 * 1024 * 1024)
    fake_cluster.members["db3"].state = "stopped"
    fake_cluster.members["db3"].set_lag("unknown")
    result, failed = run_module(replication_lag.main, dict(api_args, max_lag_bytes=1048576))
    assert failed
    assert "db2: 5242880 bytes (5.0 MiB) behind (max 1048576)" in result["msg"]
    assert "db3: not streaming (state stopped); lag in bytes unknown" in result["msg"]
    assert "0 replica(s) streaming, at least 1 required" not in result["msg"]  # db2 still streams
    by_name = {r["name"]: r for r in result["replicas"]}
    assert by_name["db2"]["within_threshold"] is False and by_name["db2"]["lag_bytes"] == 5242880
    assert by_name["db3"]["streaming"] is False and by_name["db3"]["lag_bytes"] is None


def test_default_threshold_is_maximum_lag_on_failover(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    assert fake_cluster.config is not None
    fake_cluster.config["maximum_lag_on_failover"] = 1000
    fake_cluster.members["db3"].set_lag(1001)
    result, failed = run_module(replication_lag.main, api_args)
    assert failed
    assert result["max_lag_bytes"] == 1000
    assert "db3: 1001 bytes behind (max 1000)" in result["msg"]


def test_min_replicas_and_exclude(fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    fake_cluster.members["db3"].set_lag(10**9)
    result, failed = run_module(replication_lag.main, dict(api_args, exclude=["db3"], min_replicas=2))
    assert failed
    assert [r["name"] for r in result["replicas"]] == ["db2"]
    assert result["msg"] == "Replication check failed: 1 replica(s) streaming, at least 2 required"


def test_waits_until_replicas_catch_up(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].set_lag(10**7)
    catch_up = threading.Timer(0.4, lambda: fake_cluster.members["db2"].set_lag(0))
    catch_up.start()
    args = dict(api_args, max_lag_bytes=1024, wait_timeout=5, poll_interval=0.1)
    result, failed = run_module(replication_lag.main, args)
    catch_up.join()
    assert not failed
    # It saw the lag, polled again, and stopped as soon as db2 caught up.
    assert 0 < result["waited"] < 4
    assert len(fake_cluster.calls("GET", "/cluster")) >= 2


def test_wait_gives_up_after_timeout(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any
) -> None:
    fake_cluster.members["db2"].set_lag(10**7)
    args = dict(api_args, max_lag_bytes=1024, wait_timeout=1, poll_interval=0.2)
    result, failed = run_module(replication_lag.main, args)
    assert failed
    assert 0.6 <= result["waited"] <= 1.5
    assert "db2: 10000000 bytes (9.5 MiB) behind" in result["msg"]


def test_seconds_need_pg_stat_replication(api_args: t.Dict[str, t.Any], run_module: t.Any) -> None:
    result, failed = run_module(replication_lag.main, dict(api_args, max_lag_seconds=5))
    assert failed
    assert "max_lag_seconds needs use_pg_stat_replication=true" in result["msg"]


def test_pg_stat_replication_figures_are_used(
    fake_cluster: FakeCluster, api_args: t.Dict[str, t.Any], run_module: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: t.Dict[str, t.Any] = {}

    def fake_query(conninfo: t.Dict[str, t.Any]) -> t.Dict[str, t.Dict[str, t.Any]]:
        seen.update(conninfo)
        rows = [
            {
                "application_name": "db2",
                "client_addr": "10.0.0.2",
                "state": "streaming",
                "sync_state": "async",
                "sent_lag_bytes": 0,
                "replay_lag_bytes": 0,
                "replay_lag_seconds": None,
            },
            {
                "application_name": "db3",
                "client_addr": "10.0.0.3",
                "state": "catchup",
                "sync_state": "async",
                "sent_lag_bytes": 10,
                "replay_lag_bytes": 4096,
                "replay_lag_seconds": 12.5,
            },
        ]
        return {r["application_name"]: postgres.parse_replication_row(r) for r in rows}

    monkeypatch.setattr(replication_lag, "query_replication", fake_query)
    monkeypatch.setattr(replication_lag, "require_psycopg", lambda *a: None)
    args = dict(api_args, use_pg_stat_replication=True, max_lag_bytes=1048576, max_lag_seconds=5, db_password="pw")
    result, failed = run_module(replication_lag.main, args)
    assert failed
    # Connected to the leader's address as Patroni reports it.
    assert (seen["host"], seen["port"], seen["user"], seen["dbname"]) == ("127.0.0.1", 5432, "postgres", "postgres")
    by_name = {r["name"]: r for r in result["replicas"]}
    assert by_name["db2"] == {
        "name": "db2",
        "role": "replica",
        "state": "streaming",
        "streaming": True,
        "lag_bytes": 0,
        "lag_seconds": 0.0,
        "lag_source": "pg_stat_replication",
        "within_threshold": True,
        "problems": [],
    }
    assert by_name["db3"]["problems"] == [
        "not streaming (state streaming, catchup in pg_stat_replication)",
        "12.5s behind (max 5.0s)",
    ]
    assert "pw" not in result["msg"]


@pytest.mark.parametrize(
    "address",
    [{"login_host": "10.0.0.9", "port": 6000}, {"db_host": "10.0.0.9", "db_port": 6000}],
    ids=["names", "aliases"],
)
def test_login_host_and_port_override_the_leader_address(
    fake_cluster: FakeCluster,
    api_args: t.Dict[str, t.Any],
    run_module: t.Any,
    monkeypatch: pytest.MonkeyPatch,
    address: t.Dict[str, t.Any],
) -> None:
    seen: t.List[t.Dict[str, t.Any]] = []

    def fake_query(conninfo: t.Dict[str, t.Any]) -> t.Dict[str, t.Dict[str, t.Any]]:
        seen.append(conninfo)
        return {}

    monkeypatch.setattr(replication_lag, "query_replication", fake_query)
    monkeypatch.setattr(replication_lag, "require_psycopg", lambda *a: None)
    run_module(replication_lag.main, {**api_args, **address, "use_pg_stat_replication": True, "login_user": "monitor"})
    assert [(c["host"], c["port"], c["user"]) for c in seen] == [("10.0.0.9", 6000, "monitor")]


# -- pure parts --------------------------------------------------------------------------


def test_replication_row_null_lag_means_caught_up_only_without_bytes() -> None:
    caught_up = postgres.parse_replication_row(
        {"application_name": "db2", "replay_lag_bytes": 0, "replay_lag_seconds": None}
    )
    assert caught_up["replay_lag_seconds"] == 0.0
    behind = postgres.parse_replication_row(
        {"application_name": "db2", "replay_lag_bytes": 10, "replay_lag_seconds": None}
    )
    assert behind["replay_lag_seconds"] is None
    negative = postgres.parse_replication_row(
        {"application_name": "db2", "replay_lag_bytes": -5, "replay_lag_seconds": 0.2}
    )
    assert negative["replay_lag_bytes"] == 0 and negative["replay_lag_seconds"] == 0.2


def test_conninfo_defaults_to_leader_and_omits_unset() -> None:
    params = {
        "login_host": None,
        "port": None,
        "login_user": "monitor",
        "login_password": None,
        "login_db": "postgres",
        "ssl_mode": "verify-full",
        "ca_cert": None,
        "connect_timeout": 5,
    }
    kwargs = postgres.conninfo_from_params(params, "10.0.0.1", 5433)
    assert kwargs == {
        "host": "10.0.0.1",
        "port": 5433,
        "user": "monitor",
        "dbname": "postgres",
        "sslmode": "verify-full",
        "connect_timeout": 5,
        "application_name": "neurondb.ha",
    }
    assert postgres.describe_conninfo(kwargs) == "10.0.0.1:5433/postgres as monitor"
    override = postgres.conninfo_from_params(dict(params, login_host="/run/postgresql", port=6000), "10.0.0.1", 5433)
    assert (override["host"], override["port"]) == ("/run/postgresql", 6000)


def test_missing_member_in_pg_stat_replication_fails_seconds_check() -> None:
    cluster = {
        "leader": "db1",
        "members": [
            {"name": "db1", "is_leader": True, "role": "leader", "state": "running", "lag": 0},
            {"name": "db2", "is_leader": False, "role": "replica", "state": "streaming", "lag": 0},
        ],
    }
    replicas, problems = replication_lag.evaluate(cluster, {}, max_lag_bytes=10, max_lag_seconds=1.0, min_replicas=1)
    assert replicas[0]["lag_source"] == "patroni"
    assert problems == ["db2: replay lag in seconds unknown (not in the leader's pg_stat_replication)"]


def test_doc_fragment_matches_argument_spec() -> None:
    """Names, aliases, types, defaults and choices; validate-modules checks the same for each module."""
    documented = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    spec = postgres.postgres_argument_spec()
    assert list(documented) == list(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert (doc["type"], doc.get("default"), doc.get("choices")) == (
            option["type"],
            option.get("default"),
            option.get("choices"),
        ), name
        assert sorted(doc.get("aliases", [])) == sorted(option.get("aliases", [])), name
    # Every db_* name of earlier releases is still accepted.
    aliases = {a for option in spec.values() for a in option.get("aliases", [])}
    old = {"db_host", "db_port", "db_user", "db_password", "db_name", "db_sslmode", "db_sslrootcert"}
    assert old | {"db_connect_timeout"} <= aliases
