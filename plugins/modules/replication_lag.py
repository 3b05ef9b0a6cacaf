#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: replication_lag
short_description: Check that every replica of a Patroni cluster streams and keeps up
description:
  - Checks each replica of the cluster (every member but the leader) against a maximum lag in bytes and, optionally,
    in seconds, and that enough replicas are streaming.
  - Byte lag comes from Patroni's C(GET /cluster). With O(use_pg_stat_replication=true) the module also connects to
    the leader with psycopg and reads C(pg_stat_replication), which gives the replay lag in seconds and a fresher
    byte lag (C(pg_wal_lsn_diff) of the current WAL position and the replayed one).
  - Fails naming each replica that is behind, and by how much, or not streaming. Can wait for the replicas to catch
    up first (O(wait_timeout)).
  - Never changes anything.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  max_lag_bytes:
    description:
      - Largest acceptable lag of a replica, in bytes of WAL.
      - Defaults to the cluster's C(maximum_lag_on_failover) (Patroni's default is 1 MiB), the lag above which Patroni
        would not promote the replica.
    type: int
  max_lag_seconds:
    description:
      - Largest acceptable replay lag in seconds (C(pg_stat_replication.replay_lag)).
      - Requires O(use_pg_stat_replication=true). A replica whose lag in seconds cannot be measured (for example a
        cascading replica, which is not in the leader's C(pg_stat_replication)) fails this check.
    type: float
  use_pg_stat_replication:
    description:
      - Query C(pg_stat_replication) on the leader for the lag in seconds and bytes.
      - Connection settings are O(login_user), O(login_password), O(login_db), O(ssl_mode), O(ca_cert) and
        O(connect_timeout) (or their C(db_*) aliases); the leader's host and port come from Patroni unless
        O(login_host) or O(port) is set.
      - The role needs C(pg_monitor) (or superuser) to see other sessions' replication figures.
    type: bool
    default: false
  min_replicas:
    description:
      - Fail when fewer replicas than this are streaming.
    type: int
    default: 1
  exclude:
    description:
      - Names of members not to check, for example delayed replicas (C(recovery_min_apply_delay)).
    type: list
    elements: str
    default: []
  wait_timeout:
    description:
      - Seconds to keep checking until every replica is within the thresholds. V(0) checks once.
    type: int
    default: 0
  poll_interval:
    description:
      - Seconds between checks while waiting.
    type: float
    default: 2.0
extends_documentation_fragment:
  - neurondb.ha.patroni
  - neurondb.ha.postgres
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Patroni computes byte lag against the leader position it writes to the DCS every C(loop_wait) seconds, so it can
    be that much out of date; C(pg_stat_replication) is current.
  - The lag in bytes used is the replay lag when known (Patroni 4 C(replay_lag), or C(pg_stat_replication)), else
    Patroni's C(lag).
seealso:
  - module: neurondb.ha.patroni_cluster_info
"""

EXAMPLES = r"""
- name: Every replica streams and is less than 16 MiB behind
  neurondb.ha.replication_lag:
    api_url: "{{ groups['db'] | map('regex_replace', '^(.*)$', 'https://\\1:8008') | list }}"
    ca_path: /etc/patroni/ca.pem
    max_lag_bytes: 16777216
    min_replicas: 2
  run_once: true
  delegate_to: localhost

- name: Wait up to 5 minutes for replicas to replay within 5 seconds of the leader
  neurondb.ha.replication_lag:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
    use_pg_stat_replication: true
    login_user: monitor
    login_password: "{{ vault_monitor_password }}"
    ssl_mode: verify-full
    ca_cert: /etc/postgresql/ca.pem
    max_lag_bytes: 1048576
    max_lag_seconds: 5
    wait_timeout: 300
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
leader:
  description: Name of the leader.
  returned: always
  type: str
  sample: db1
replicas:
  description: One entry per checked replica.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Member name.
      type: str
      sample: db2
    role:
      description: Patroni role (V(replica), V(sync_standby), V(quorum_standby)).
      type: str
      sample: replica
    state:
      description: Patroni state of the member (V(streaming) when healthy).
      type: str
      sample: streaming
    streaming:
      description: Whether the replica streams WAL (and, with C(pg_stat_replication), is seen streaming by the leader).
      type: bool
      sample: true
    lag_bytes:
      description: Lag in bytes used for the check; null when unknown.
      type: int
      sample: 0
    lag_seconds:
      description: Replay lag in seconds from C(pg_stat_replication); null when not measured.
      type: float
      sample: 0.0
    lag_source:
      description: Where O(max_lag_bytes) was checked from, V(patroni) or V(pg_stat_replication).
      type: str
      sample: patroni
    within_threshold:
      description: Whether the replica passed every check.
      type: bool
      sample: true
    problems:
      description: Why the replica failed, empty when it passed.
      type: list
      elements: str
      sample: []
streaming_replicas:
  description: How many checked replicas are streaming.
  returned: always
  type: int
  sample: 2
max_lag_bytes:
  description: Byte threshold applied.
  returned: always
  type: int
  sample: 1048576
max_lag_seconds:
  description: Seconds threshold applied, null when none.
  returned: always
  type: float
  sample: 5.0
waited:
  description: Seconds spent waiting for the replicas to catch up.
  returned: always
  type: float
  sample: 0.0
"""

import time
import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.neurondb.ha.plugins.module_utils.patroni import (
    PATRONI_REQUIRED_BY,
    PATRONI_REQUIRED_TOGETHER,
    Cluster,
    PatroniError,
    client_from_module,
    dcs_settings,
    leader_member,
    patroni_argument_spec,
)
from ansible_collections.neurondb.ha.plugins.module_utils.postgres import (
    PG_ERRORS,
    conninfo_from_params,
    describe_conninfo,
    postgres_argument_spec,
    query_replication,
    require_psycopg,
)


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value} bytes ({value / size:.1f} {unit})"
    return f"{value} bytes"


def check_replica(
    member: t.Dict[str, t.Any],
    pg_row: t.Dict[str, t.Any] | None,
    max_lag_bytes: int,
    max_lag_seconds: float | None,
) -> t.Dict[str, t.Any]:
    """Figures and verdict for one replica; ``pg_row`` is its pg_stat_replication row, if queried and present."""
    streaming = member["state"] == "streaming" and (pg_row is None or pg_row["state"] == "streaming")
    if pg_row is not None and pg_row["replay_lag_bytes"] is not None:
        lag_bytes, source = pg_row["replay_lag_bytes"], "pg_stat_replication"
    else:
        lag_bytes, source = member["lag"], "patroni"
    lag_seconds = pg_row["replay_lag_seconds"] if pg_row is not None else None

    problems = []
    if not streaming:
        seen = f", {pg_row['state']} in pg_stat_replication" if pg_row is not None else ""
        problems.append(f"not streaming (state {member['state']}{seen})")
    if lag_bytes is None:
        problems.append("lag in bytes unknown")
    elif lag_bytes > max_lag_bytes:
        problems.append(f"{format_bytes(lag_bytes)} behind (max {max_lag_bytes})")
    if max_lag_seconds is not None:
        if lag_seconds is None:
            problems.append("replay lag in seconds unknown (not in the leader's pg_stat_replication)")
        elif lag_seconds > max_lag_seconds:
            problems.append(f"{lag_seconds:.1f}s behind (max {max_lag_seconds}s)")
    return {
        "name": member["name"],
        "role": member["role"],
        "state": member["state"],
        "streaming": streaming,
        "lag_bytes": lag_bytes,
        "lag_seconds": lag_seconds,
        "lag_source": source,
        "within_threshold": not problems,
        "problems": problems,
    }


def evaluate(
    cluster: Cluster,
    pg_rows: t.Dict[str, t.Dict[str, t.Any]] | None,
    *,
    max_lag_bytes: int,
    max_lag_seconds: float | None,
    min_replicas: int,
    exclude: t.Sequence[str] = (),
) -> t.Tuple[t.List[t.Dict[str, t.Any]], t.List[str]]:
    """Check every replica; returns (per-replica figures, problems as sentences)."""
    replicas = []
    for member in cluster["members"]:
        if member["is_leader"] or member["name"] in exclude:
            continue
        row = pg_rows.get(member["name"]) if pg_rows is not None else None
        replicas.append(check_replica(member, row, max_lag_bytes, max_lag_seconds))

    problems = [f"{r['name']}: {'; '.join(r['problems'])}" for r in replicas if r["problems"]]
    if cluster["leader"] is None:
        problems.insert(0, "the cluster has no leader")
    streaming = sum(1 for r in replicas if r["streaming"])
    if streaming < min_replicas:
        problems.append(f"{streaming} replica(s) streaming, at least {min_replicas} required")
    return replicas, problems


def main() -> None:
    argument_spec = patroni_argument_spec()
    argument_spec.update(postgres_argument_spec())
    argument_spec.update(
        max_lag_bytes=dict(type="int"),
        max_lag_seconds=dict(type="float"),
        use_pg_stat_replication=dict(type="bool", default=False),
        min_replicas=dict(type="int", default=1),
        exclude=dict(type="list", elements="str", default=[]),
        wait_timeout=dict(type="int", default=0),
        poll_interval=dict(type="float", default=2.0),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=PATRONI_REQUIRED_TOGETHER,
        required_by=PATRONI_REQUIRED_BY,
        supports_check_mode=True,
    )
    p = module.params
    if p["max_lag_seconds"] is not None and not p["use_pg_stat_replication"]:
        module.fail_json(msg="max_lag_seconds needs use_pg_stat_replication=true: Patroni reports lag in bytes only")
    if p["use_pg_stat_replication"]:
        require_psycopg(module, "to query pg_stat_replication (use_pg_stat_replication=true)")

    client = client_from_module(module)
    started = time.monotonic()
    deadline = started + max(p["wait_timeout"], 0)
    try:
        max_lag_bytes = p["max_lag_bytes"]
        if max_lag_bytes is None:
            max_lag_bytes = dcs_settings(client.config())["maximum_lag_on_failover"]
        while True:
            cluster = client.cluster()
            pg_rows = None
            if p["use_pg_stat_replication"] and cluster["leader"]:
                leader = leader_member(cluster) or {}
                conninfo = conninfo_from_params(p, leader.get("host"), leader.get("port"))
                try:
                    pg_rows = query_replication(conninfo)
                except PG_ERRORS as exc:
                    module.fail_json(
                        msg=f"Cannot read pg_stat_replication on the leader ({describe_conninfo(conninfo)}): {exc}"
                    )
            replicas, problems = evaluate(
                cluster,
                pg_rows,
                max_lag_bytes=max_lag_bytes,
                max_lag_seconds=p["max_lag_seconds"],
                min_replicas=p["min_replicas"],
                exclude=p["exclude"],
            )
            if not problems or time.monotonic() + p["poll_interval"] > deadline:
                break
            time.sleep(p["poll_interval"])
    except PatroniError as exc:
        module.fail_json(msg=str(exc), error=exc.as_dict())

    result = dict(
        changed=False,
        leader=cluster["leader"],
        replicas=replicas,
        streaming_replicas=sum(1 for r in replicas if r["streaming"]),
        max_lag_bytes=max_lag_bytes,
        max_lag_seconds=p["max_lag_seconds"],
        waited=round(time.monotonic() - started, 3),
    )
    if problems:
        module.fail_json(msg="Replication check failed: " + " | ".join(problems), **result)
    module.exit_json(msg=f"{len(replicas)} replica(s) within thresholds", **result)


if __name__ == "__main__":
    main()
