#!/usr/bin/python3
"""Patroni callback: keep the etcd leader off the PostgreSQL primary's host.

When the primary's host is lost and its etcd member was the etcd leader, etcd
must first elect a new leader before Patroni's leader key can expire and a
replica can take over: the write outage grows by the etcd election (about 6 s
measured on the lab). Moving the etcd leadership to another member whenever
this host becomes (or starts as) the primary takes that election out of the
outage.

Patroni runs it as on_start and on_role_change with three arguments: the
action, the new role and the cluster name. It reads the etcd endpoints and
client certificate from Patroni's own configuration and does nothing unless
the role is primary and this host's etcd member leads. It never fails
Patroni: every problem is logged and the exit status is 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import yaml

CONFIG = "/etc/patroni/config.yml"
PRIMARY_ROLES = {"primary", "master"}


def log(message: str) -> None:
    print(f"neurondb_etcd_leader: {message}", file=sys.stderr, flush=True)


def etcdctl(etcd: dict[str, Any], endpoints: list[str], *args: str) -> Any:
    command = [
        "etcdctl",
        f"--endpoints={','.join(endpoints)}",
        f"--cacert={etcd['cacert']}",
        f"--cert={etcd['cert']}",
        f"--key={etcd['key']}",
        "--dial-timeout=2s",
        "--command-timeout=5s",
        "-w",
        "json",
        *args,
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=15, check=True)
    return json.loads(run.stdout) if run.stdout.strip().startswith(("{", "[")) else run.stdout


def main(argv: list[str]) -> int:
    role = argv[2] if len(argv) > 2 else ""
    if role not in PRIMARY_ROLES:
        return 0
    with open(CONFIG) as handle:
        config = yaml.safe_load(handle)
    etcd = config.get("etcd3") or {}
    protocol = etcd.get("protocol", "https")
    endpoints = [f"{protocol}://{host}" for host in etcd.get("hosts", [])]
    me = urlsplit(f"//{config['restapi']['connect_address']}").hostname
    mine = [e for e in endpoints if urlsplit(e).hostname == me]
    if not mine:
        return 0  # etcd runs elsewhere: nothing to move
    # One member at a time: right after a failover a member may be down.
    by_endpoint = {}
    for endpoint in endpoints:
        try:
            by_endpoint[endpoint] = etcdctl(etcd, [endpoint], "endpoint", "status")[0]
        except (subprocess.SubprocessError, OSError, ValueError, LookupError) as exc:
            log(f"{endpoint} does not answer: {exc}")
    local = by_endpoint.get(mine[0])
    if local is None:
        log(f"no status from {mine[0]}; leaving the etcd leader where it is")
        return 0
    my_id, leader_id = local["Status"]["header"]["member_id"], local["Status"]["leader"]
    if my_id != leader_id:
        return 0
    others = [s for e, s in by_endpoint.items() if e != mine[0] and s["Status"]["leader"] == leader_id]
    if not others:
        log("no other etcd member answers; the etcd leader stays on the primary's host")
        return 0
    target = others[0]["Status"]["header"]["member_id"]
    etcdctl(etcd, mine, "move-leader", f"{target:x}")
    log(f"{argv[1]} as {role}: moved the etcd leader from {mine[0]} to {others[0]['Endpoint']}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception as exc:  # a callback must never disturb Patroni
        log(f"left the etcd leader alone: {type(exc).__name__}: {exc}")
        sys.exit(0)
