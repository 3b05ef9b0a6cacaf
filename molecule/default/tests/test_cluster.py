"""The foundation: one leader, two streaming replicas, routing through the
load balancer, etcd over TLS, and a killed replica that rejoins."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from conftest import get_host, wait_for

# Cluster-level checks: run once, not once per inventory host.
testinfra_hosts = ["ansible://mol-db1"]

REPLICAS_STREAMING_TIMEOUT = 120
ETCDCTL = (
    "etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/neurondb/pki/ca.crt "
    "--cert=/etc/neurondb/pki/host.crt --key=/etc/neurondb/pki/host.key"
)


def streaming_cluster(cluster: dict[str, Any]) -> dict[str, Any] | None:
    members = cluster["members"]
    leaders = [m for m in members if m["role"] == "leader" and m["state"] == "running"]
    replicas = [m for m in members if m["role"] in ("replica", "sync_standby") and m["state"] == "streaming"]
    if len(leaders) == 1 and len(replicas) == 2:
        return {"leader": leaders[0], "replicas": replicas}
    return None


def test_one_leader_two_streaming_replicas_on_one_timeline(patroni_cluster) -> None:
    state = wait_for(
        lambda: streaming_cluster(patroni_cluster()),
        REPLICAS_STREAMING_TIMEOUT,
        "one running leader and two streaming replicas",
    )
    timelines = {m["timeline"] for m in [state["leader"], *state["replicas"]]}
    assert len(timelines) == 1, f"members on different timelines: {timelines}"


def test_write_through_lb_is_readable_on_every_replica(connect, patroni_cluster) -> None:
    marker = str(uuid.uuid4())
    with connect("mol-lb1", 5000) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is False
        conn.execute("create table if not exists molecule_probe (marker text primary key)")
        conn.execute("insert into molecule_probe values (%s)", (marker,))
    state = streaming_cluster(patroni_cluster())
    assert state is not None
    for replica in state["replicas"]:

        def has_row(name: str = replica["name"]) -> bool:
            with connect(name) as conn:
                return (
                    conn.execute("select count(*) from molecule_probe where marker = %s", (marker,)).fetchone()[0] == 1
                )

        wait_for(has_row, 30, f"the row on replica {replica['name']}")


def test_read_only_port_refuses_writes(connect) -> None:
    with connect("mol-lb1", 5001) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("create table molecule_must_fail (id int)")


def test_etcd_healthy_over_tls(host) -> None:
    result = host.run(f"{ETCDCTL} endpoint health --cluster -w json")
    assert result.rc == 0, result.stderr
    endpoints = json.loads(result.stdout)
    assert len(endpoints) == 3
    assert all(e["health"] for e in endpoints), endpoints
    assert all(e["endpoint"].startswith("https://") for e in endpoints)
    # Plain HTTP must not be served.
    plain = host.run("curl -s -m 3 http://127.0.0.1:2379/health")
    assert plain.rc != 0 or '"health":"true"' not in plain.stdout


def etcd_members(host) -> dict[str, dict[str, Any]]:
    """Each member's host address -> its endpoint status (member_id, leader)."""
    result = host.run(f"{ETCDCTL} endpoint status --cluster -w json")
    assert result.rc == 0, result.stderr
    return {urlsplit(s["Endpoint"]).hostname: s["Status"] for s in json.loads(result.stdout)}


def test_etcd_leader_moves_off_a_new_primary(host, patroni_cluster) -> None:
    """The etcd leadership is put on a replica's host, that replica becomes
    the primary by a switchover, and Patroni's on_role_change callback moves
    the etcd leadership away from it: losing the primary's host then costs no
    etcd election on top of the leader key's ttl."""
    state = wait_for(lambda: streaming_cluster(patroni_cluster()), REPLICAS_STREAMING_TIMEOUT, "a healthy cluster")
    # With synchronous_mode on, Patroni switches over only to a synchronous
    # standby (it refuses any other candidate).
    candidate = next((r for r in state["replicas"] if r["role"] == "sync_standby"), state["replicas"][0])
    members = etcd_members(host)
    target = members[candidate["host"]]["header"]["member_id"]
    leader_id = next(iter(members.values()))["leader"]
    leader_host = next(address for address, status in members.items() if status["header"]["member_id"] == leader_id)
    if leader_id != target:
        # move-leader is served by the current etcd leader only.
        current = next(m["name"] for m in patroni_cluster()["members"] if m["host"] == leader_host)
        result = get_host(current).run(f"{ETCDCTL} move-leader {target:x}")
        assert result.rc == 0, result.stderr
    assert etcd_members(host)[candidate["host"]]["leader"] == target

    switch = host.run(
        f"patronictl -c /etc/patroni/config.yml switchover --leader {state['leader']['name']} "
        f"--candidate {candidate['name']} --force"
    )
    assert switch.rc == 0, switch.stdout + switch.stderr
    wait_for(
        lambda: (streaming_cluster(patroni_cluster()) or {}).get("leader", {}).get("name") == candidate["name"],
        REPLICAS_STREAMING_TIMEOUT,
        f"{candidate['name']} leading with both replicas streaming",
    )

    def etcd_leader_elsewhere() -> bool:
        statuses = etcd_members(host)
        return statuses[candidate["host"]]["leader"] != statuses[candidate["host"]]["header"]["member_id"]

    wait_for(etcd_leader_elsewhere, 60, f"the etcd leader to leave {candidate['name']}, the new primary")


def test_killed_replica_rejoins(connect, patroni_cluster) -> None:
    state = wait_for(lambda: streaming_cluster(patroni_cluster()), REPLICAS_STREAMING_TIMEOUT, "a healthy cluster")
    victim = state["replicas"][0]["name"]
    node = get_host(victim)
    # Every database process of the replica dies at once, as in a crash.
    node.run("pkill -9 -u postgres")
    wait_for(
        lambda: not any(m["name"] == victim and m["state"] == "streaming" for m in patroni_cluster()["members"]),
        30,
        f"{victim} to drop out",
    )
    # systemd restarts Patroni (Restart=on-failure); it must come back streaming.
    state = wait_for(
        lambda: streaming_cluster(patroni_cluster()), REPLICAS_STREAMING_TIMEOUT, f"{victim} streaming again"
    )
    assert victim in {m["name"] for m in state["replicas"]}
    marker = str(uuid.uuid4())
    with connect("mol-lb1", 5000) as conn:
        conn.execute("create table if not exists molecule_probe (marker text primary key)")
        conn.execute("insert into molecule_probe values (%s)", (marker,))

    def replicated() -> bool:
        with connect(victim) as conn:
            return conn.execute("select count(*) from molecule_probe where marker = %s", (marker,)).fetchone()[0] == 1

    wait_for(replicated, 30, f"new rows on {victim}")
