"""The collection's modules, and the planned switchover built on them, against
the real cluster: what they report matches PostgreSQL, refusals change
nothing, a switchover moves the leader and the routing, and switchover.yml
costs the clients no failed transaction.

Runs after test_cluster.py and leaves the cluster healthy after every test
(one running leader, two streaming replicas on its timeline): the `healthy`
fixture waits for that before the test and again afterwards. No assertion is
made on durations (design.md: timings belong in bench/).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import INVENTORY, PROJECT, ansible_command, ansible_env, run_playbook, wait_for

DB_HOSTS = ("mol-db1", "mol-db2", "mol-db3")
# Where the modules run: a database host; a PgBouncer host for the ones that
# need psycopg (the database hosts lack it).
ON_DB, ON_APP = "mol-db1", "mol-app1"
PGBOUNCER_HOSTS = ("mol-app1", "mol-app2")
CA_ON_HOSTS = "/etc/neurondb/pki/ca.crt"


ANSIBLE = ansible_command("ansible")
HEALTHY_TIMEOUT = 180
MIB = 1024 * 1024


# -- helpers -------------------------------------------------------------------------


def healthy_state(cluster: dict[str, Any]) -> dict[str, Any] | None:
    """Leader, replicas and timeline when one leader runs and two replicas
    stream on its timeline, not in maintenance mode; None otherwise."""
    members = cluster["members"]
    leaders = [m for m in members if m["role"] == "leader" and m["state"] == "running"]
    replicas = [m for m in members if m["role"] != "leader" and m["state"] == "streaming"]
    if cluster.get("pause") or len(leaders) != 1 or len(replicas) != len(DB_HOSTS) - 1:
        return None
    timeline = leaders[0].get("timeline")
    if timeline is None or any(m.get("timeline") != timeline for m in replicas):
        return None
    if any(not isinstance(m.get("lag"), int) or m["lag"] > MIB for m in replicas):
        return None
    return {"leader": leaders[0]["name"], "replicas": sorted(m["name"] for m in replicas), "timeline": timeline}


class ModuleFailed(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result.get("msg"))
        self.result = result


def module(host: str, name: str, args: dict[str, Any], check: bool = False, diff: bool = False) -> dict[str, Any]:
    """Run neurondb.ha.<name> on inventory host `host`, as testinfra's
    host.ansible() would, and return its result; raise ModuleFailed with the
    result when the module fails. Not host.ansible() itself: with ansible-core
    2.19 the results it reads (--tree) lack `failed` and `diff`, so a failed
    module would look like a good one."""
    command = [ANSIBLE, host, "-i", INVENTORY, "-m", f"neurondb.ha.{name}", "-a", json.dumps(args)]
    command += ["--check"] * check + ["--diff"] * diff
    env = ansible_env()
    env.update(
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.json",  # and no other callback on stdout
    )
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    try:
        result = json.loads(run.stdout)["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, LookupError):
        pytest.fail(
            f"{name} on {host} gave no result (exit {run.returncode}): {run.stdout[-2000:]}{run.stderr[-2000:]}"
        )
    if result.get("failed"):
        raise ModuleFailed(result)
    assert run.returncode == 0, f"{name} on {host}: exit {run.returncode}: {result}"
    return result


def module_failure(host: str, name: str, args: dict[str, Any], check: bool = False) -> dict[str, Any]:
    """Run a module that must fail; returns its result."""
    with pytest.raises(ModuleFailed) as failure:
        module(host, name, args, check=check)
    return failure.value.result


def read_json(url: str, tls: ssl.SSLContext) -> Any:
    with urllib.request.urlopen(url, context=tls, timeout=5) as response:
        return json.load(response)


def timeline_of(connect: Callable[..., Any], name: str) -> int | None:
    """The timeline PostgreSQL itself is on: of its WAL on a primary, of the
    WAL it receives on a streaming replica."""
    with connect(name) as conn:
        if conn.execute("select pg_is_in_recovery()").fetchone()[0]:
            row = conn.execute("select received_tli from pg_stat_wal_receiver").fetchone()
            return row[0] if row else None
        walfile = conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        return int(walfile[:8], 16)


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture
def healthy(patroni_cluster: Callable[[], dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A healthy cluster before the test, and again after it, whatever it did."""
    yield wait_for(lambda: healthy_state(patroni_cluster()), HEALTHY_TIMEOUT, "a healthy cluster")
    wait_for(lambda: healthy_state(patroni_cluster()), HEALTHY_TIMEOUT, "a healthy cluster after the test")


@pytest.fixture(scope="module")
def api(addresses: dict[str, str], hostvars: dict[str, Any]) -> dict[str, Any]:
    """Options of the Patroni modules, as run on a cluster host."""
    return {
        "api_url": [f"https://{addresses[name]}:8008" for name in DB_HOSTS],
        "ca_path": CA_ON_HOSTS,
        "api_username": hostvars.get("patroni_restapi_username", "patroni"),
        "api_password": hostvars["patroni_restapi_password"],
    }


@pytest.fixture(scope="module")
def read_api(api: dict[str, Any]) -> dict[str, Any]:
    """The same without credentials: reading needs none."""
    return {"api_url": api["api_url"], "ca_path": api["ca_path"]}


# -- patroni_cluster_info ------------------------------------------------------------


def test_cluster_info_matches_postgres(healthy, read_api, connect) -> None:
    def matches() -> dict[str, Any] | None:
        info = module(ON_DB, "patroni_cluster_info", read_api)
        actual = {name: timeline_of(connect, name) for name in DB_HOSTS}
        reported = {m["name"]: m["timeline"] for m in info["members"]}
        return info if reported == actual else None

    # Patroni publishes replicas' figures every loop_wait: let it catch up.
    info = wait_for(matches, 60, "patroni_cluster_info's timelines to match PostgreSQL's")
    assert info["changed"] is False
    assert sorted(m["name"] for m in info["members"]) == list(DB_HOSTS)
    in_recovery = {}
    for name in DB_HOSTS:
        with connect(name) as conn:
            in_recovery[name] = conn.execute("select pg_is_in_recovery()").fetchone()[0]
    assert [name for name, recovering in in_recovery.items() if not recovering] == [info["leader"]]
    assert info["leader"] == healthy["leader"]
    assert info["paused"] is False
    for member in info["members"]:
        assert member["is_leader"] is (member["name"] == info["leader"])
        assert member["state"] == ("running" if member["is_leader"] else "streaming")
        assert isinstance(member["lag"], int) and member["lag"] >= 0


# -- replication_lag -----------------------------------------------------------------


def test_replication_lag_passes_on_a_healthy_cluster(healthy, read_api) -> None:
    result = module(ON_DB, "replication_lag", {**read_api, "max_lag_bytes": 16 * MIB, "min_replicas": 2})
    assert result["changed"] is False
    assert result["leader"] == healthy["leader"]
    assert result["streaming_replicas"] == 2
    assert sorted(r["name"] for r in result["replicas"]) == healthy["replicas"]
    assert all(r["within_threshold"] and not r["problems"] for r in result["replicas"])


@pytest.fixture
def replay_paused(healthy, api, connect, addresses, tls) -> Iterator[str]:
    """A replica whose WAL replay is paused. Patroni resumes paused replay in
    its next HA loop unless the cluster is in maintenance mode, so the cluster
    is paused meanwhile; both are undone afterwards, whatever happened."""
    replica = healthy["replicas"][0]
    module(ON_DB, "patroni_config", {**api, "config": {"pause": True}})
    try:
        # Once the replica's own HA loop has seen the pause, no loop resumes replay.
        wait_for(
            lambda: read_json(f"https://{addresses[replica]}:8008/patroni", tls).get("pause") is True,
            60,
            f"{replica} to see the maintenance mode",
        )
        with connect(replica) as conn:
            conn.execute("select pg_wal_replay_pause()")
        yield replica
    finally:
        try:
            with connect(replica) as conn:
                conn.execute("select pg_wal_replay_resume()")
        finally:
            module(ON_DB, "patroni_config", {**api, "config": {"pause": None}})


def test_replication_lag_fails_naming_a_replica_that_does_not_replay(
    replay_paused, healthy, read_api, hostvars, connect
) -> None:
    with connect(healthy["leader"]) as conn:
        # About 6 MiB of WAL.
        conn.execute("create table if not exists molecule_lag (filler text)")
        conn.execute("insert into molecule_lag select repeat(md5(random()::text), 40) from generate_series(1, 5000)")
        conn.execute("drop table molecule_lag")
    # Patroni's own lag is what the replica received, which goes on; what it
    # replayed is in pg_stat_replication, read with psycopg (on mol-app1).
    args = {
        **read_api,
        "max_lag_bytes": MIB,
        "use_pg_stat_replication": True,
        "db_password": hostvars["patroni_superuser_password"],
        "db_sslmode": "verify-ca",
        "db_sslrootcert": CA_ON_HOSTS,
    }
    result = module_failure(ON_APP, "replication_lag", args)
    assert f"{replay_paused}: " in result["msg"] and "behind" in result["msg"], result["msg"]
    behind = {r["name"]: r for r in result["replicas"]}
    assert behind[replay_paused]["within_threshold"] is False
    assert behind[replay_paused]["lag_bytes"] > MIB
    assert all(r["within_threshold"] for name, r in behind.items() if name != replay_paused)


# -- patroni_switchover --------------------------------------------------------------


def test_switchover_check_mode_names_the_candidate_and_changes_nothing(healthy, api, patroni_cluster) -> None:
    result = module(ON_DB, "patroni_switchover", api, check=True)
    assert result["changed"] is True
    assert result["old_leader"] == healthy["leader"]
    assert result["would_switch_to"] in healthy["replicas"]
    assert result["candidates"][result["would_switch_to"]] == []
    assert healthy_state(patroni_cluster()) == healthy
    assert not patroni_cluster().get("scheduled_switchover")


def test_refused_switchovers_change_nothing(healthy, api, patroni_cluster) -> None:
    unknown = module_failure(ON_DB, "patroni_switchover", {**api, "candidate": "mol-db9"})
    assert "mol-db9" in unknown["msg"] and "not a member" in unknown["msg"], unknown["msg"]

    # An eligible candidate (the synchronous standby when there is one), so
    # that only the password is wrong.
    members = patroni_cluster()["members"]
    candidate = next((m["name"] for m in members if m["role"] == "sync_standby"), healthy["replicas"][0])
    wrong = module_failure(ON_DB, "patroni_switchover", {**api, "candidate": candidate, "api_password": "wrong"})
    assert "401" in wrong["msg"], wrong["msg"]
    assert wrong.get("new_leader") is None

    # Nothing is pending either: a moment later the same leader, timeline and replicas.
    time.sleep(3)
    assert healthy_state(patroni_cluster()) == healthy
    assert not patroni_cluster().get("scheduled_switchover")


def test_switchover_moves_the_leader_and_the_load_balancer_follows(
    healthy, api, addresses, patroni_cluster, connect
) -> None:
    result = module(ON_DB, "patroni_switchover", {**api, "leader": healthy["leader"]})
    assert result["changed"] is True
    assert result["old_leader"] == healthy["leader"]
    assert result["new_leader"] in healthy["replicas"]
    assert result["timeline"] == healthy["timeline"] + 1

    after = wait_for(lambda: healthy_state(patroni_cluster()), HEALTHY_TIMEOUT, "the old leader streaming again")
    assert after["leader"] == result["new_leader"]
    assert after["timeline"] == healthy["timeline"] + 1
    assert healthy["leader"] in after["replicas"]

    def lb_writes_to_the_new_leader() -> bool:
        with connect("mol-lb1", 5000) as conn:
            recovering, server = conn.execute("select pg_is_in_recovery(), host(inet_server_addr())").fetchone()
        return not recovering and server == addresses[result["new_leader"]]

    wait_for(lb_writes_to_the_new_leader, 60, f"mol-lb1:5000 to reach {result['new_leader']}")


# -- switchover.yml ------------------------------------------------------------------


def test_switchover_playbook_fails_no_client_transaction(healthy, patroni_cluster) -> None:
    """switchover-drill.yml: the collection's write probe on mol-app1 writes
    through PgBouncer, 20 transactions a second, while switchover.yml moves
    the leader with every PgBouncer paused and both routers and the edge
    HAProxy following. The playbook itself fails on any failed or lost write;
    its report is checked here as well."""
    with tempfile.TemporaryDirectory() as reports:
        run = run_playbook(os.path.join(PROJECT, "playbooks", "switchover-drill.yml"), {"drill_report_dir": reports})
        assert run.returncode == 0, run.summary()
        (drill_file,) = [f for f in os.listdir(reports) if f.endswith(".json") and not f.endswith("-switchover.json")]
        with open(os.path.join(reports, drill_file)) as handle:
            drill = json.load(handle)
    figures, report = drill["figures"], drill["switchover"]
    assert figures["acked"] > 0, figures
    assert figures["failed_attempts"] == 0, f"client transactions failed during the switchover: {figures}"
    assert figures["lost_writes"] == 0, f"acknowledged writes are missing: {figures}"

    assert report["old_leader"] == healthy["leader"]
    assert report["new_leader"] in healthy["replicas"]
    assert report["leader_now"] == report["new_leader"]
    assert int(report["timeline"]) == healthy["timeline"] + 1
    assert sorted(report["stall_seconds_by_pgbouncer"]) == sorted(PGBOUNCER_HOSTS)
    assert sorted(report["replicas_streaming"]) == sorted(set(DB_HOSTS) - {report["new_leader"]})
    state = wait_for(lambda: healthy_state(patroni_cluster()), HEALTHY_TIMEOUT, "a healthy cluster")
    assert state["leader"] == report["new_leader"]


# -- patroni_config ------------------------------------------------------------------


def test_patroni_config_check_mode_reports_a_change_without_making_it(healthy, api, addresses, tls) -> None:
    config_url = f"https://{addresses['mol-db1']}:8008/config"
    before = read_json(config_url, tls)
    current = int(before.get("maximum_lag_on_failover", MIB))
    wanted = current + MIB
    result = module(
        ON_DB, "patroni_config", {**api, "config": {"maximum_lag_on_failover": wanted}}, check=True, diff=True
    )
    assert result["changed"] is True
    assert result["patch"] == {"maximum_lag_on_failover": wanted}
    assert int(result["diff"]["before"].get("maximum_lag_on_failover", MIB)) == current
    assert result["diff"]["after"]["maximum_lag_on_failover"] == wanted
    assert read_json(config_url, tls) == before


# -- pgbouncer_command ---------------------------------------------------------------


@pytest.mark.parametrize("name", PGBOUNCER_HOSTS)
def test_pgbouncer_command_shows_pools_and_runs(name, hostvars) -> None:
    login = {
        "login_user": hostvars.get("pgbouncer_admin_user", "pgbouncer_admin"),
        "login_password": hostvars["pgbouncer_admin_password"],
    }
    pools = module(name, "pgbouncer_command", {**login, "command": "show", "show": "pools"})
    assert pools["changed"] is False
    assert pools["rows"], "SHOW POOLS returned no rows"
    assert all({"database", "user", "cl_active", "cl_waiting", "sv_active"} <= set(row) for row in pools["rows"])
    if name == "mol-app1":  # where the switchover drill's probe wrote
        assert "neurondb" in {row["database"] for row in pools["rows"]}
    # Not left paused by the switchover.
    state = module(name, "pgbouncer_command", {**login, "command": "show", "show": "state"})
    assert {row["key"]: row["value"] for row in state["rows"]}.get("paused") == "no"
