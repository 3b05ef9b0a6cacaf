#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: patroni_switchover
short_description: Planned switchover of a Patroni cluster's leader to a healthy replica
description:
  - Checks that the switchover is safe, then asks Patroni to move the leader (C(POST /switchover)) and waits until
    the new leader runs.
  - Refuses, changing nothing, when the cluster has no leader, is paused (maintenance mode), already has a switchover
    scheduled, or when the candidate is not a healthy replica - not streaming, not on the leader's timeline, lagging
    more than O(max_lag_bytes), tagged C(nofailover) (or C(failover_priority) <= 0) or, with C(synchronous_mode),
    not a synchronous standby.
  - Without O(candidate) the module picks the eligible replica with the least lag itself (synchronous standbys and
    higher C(failover_priority) first on a tie), so that check mode can tell which one it would be.
  - Idempotent - when O(candidate) already leads, nothing is done.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  candidate:
    description:
      - Member to promote. When omitted, the healthiest eligible replica is chosen.
    type: str
  leader:
    description:
      - Name of the member expected to lead now. The module refuses when another member leads, unless that member
        is O(candidate) (then there is nothing to do).
    type: str
  max_lag_bytes:
    description:
      - Largest acceptable lag of the candidate, in bytes.
      - Defaults to the cluster's C(maximum_lag_on_failover), which Patroni also enforces.
    type: int
  scheduled_at:
    description:
      - Schedule the switchover instead of running it now. ISO 8601 timestamp with a time zone, for example
        V(2025-01-10T02:00:00+00:00).
      - Patroni checks the candidate's health only when the time comes, so the module then checks only that the
        candidate exists, is a replica and may be promoted, and does not pick a candidate when none is given.
      - Scheduling the same switchover again reports no change. Cannot be combined with O(checkpoint=true).
    type: str
  checkpoint:
    description:
      - Run C(CHECKPOINT) on the leader before the switchover, so that the old leader has less to write when it shuts
        down and the switchover is shorter.
      - Connects with the PostgreSQL connection options (O(login_user), O(login_password), ...); needs a superuser or,
        from PostgreSQL 15, a role with C(pg_checkpoint).
    type: bool
    default: false
  wait_timeout:
    description:
      - Seconds to wait, once Patroni accepted the switchover or could not tell its outcome, for a new leader to be
        running on the new timeline.
    type: int
    default: 60
  poll_interval:
    description:
      - Seconds between reads of C(/cluster) while waiting.
    type: float
    default: 1.0
extends_documentation_fragment:
  - neurondb.ha.patroni
  - neurondb.ha.postgres
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Runs every check and reports the member it would promote (RV(would_switch_to)) or why it would refuse.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Patroni answers C(POST /switchover) only once the leader lock has moved, or with HTTP 503
    C(Switchover status unknown) after about twice C(loop_wait) (at least 20 s). The HTTP timeout of that call is
    raised accordingly. On a 503, or when the answer is lost, the module watches C(/cluster) for up to
    O(wait_timeout) seconds rather than asking again.
  - The PostgreSQL connection options (O(login_host), O(port), O(login_user), O(login_password), O(login_db),
    O(ssl_mode), O(ca_cert), O(connect_timeout), and their C(db_*) aliases) are only used with O(checkpoint=true).
seealso:
  - module: neurondb.ha.patroni_cluster_info
  - module: neurondb.ha.replication_lag
"""

EXAMPLES = r"""
- name: Switch over to db2
  neurondb.ha.patroni_switchover:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
    api_username: patroni
    api_password: "{{ vault_patroni_api_password }}"
    ca_path: /etc/patroni/ca.pem
    candidate: db2
    checkpoint: true
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
  register: switchover
  run_once: true
  delegate_to: localhost

- name: Report it
  ansible.builtin.debug:
    msg: >-
      {{ switchover.old_leader }} -> {{ switchover.new_leader }} in {{ switchover.elapsed }}s,
      timeline {{ switchover.timeline }}

- name: Which replica would take over? (nothing changes)
  neurondb.ha.patroni_switchover:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
  check_mode: true
  register: plan

- name: Switch over during tonight's window
  neurondb.ha.patroni_switchover:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
    api_username: patroni
    api_password: "{{ vault_patroni_api_password }}"
    candidate: db3
    scheduled_at: "2025-01-10T02:00:00+00:00"
"""

RETURN = r"""
old_leader:
  description: Leader before the switchover.
  returned: success
  type: str
  sample: db1
new_leader:
  description: Leader after the switchover (the current leader when nothing was done).
  returned: success and not scheduled
  type: str
  sample: db2
would_switch_to:
  description: Member that would be promoted, in check mode.
  returned: check mode
  type: str
  sample: db2
timeline:
  description:
    - Timeline of the new leader.
    - Asked from the new leader itself (C(GET /patroni)) when C(GET /cluster) does not show it yet, as happens until
      the new leader's next HA loop; null when neither knows it.
  returned: success and not scheduled
  type: int
  sample: 5
elapsed:
  description: Seconds from the switchover request until the new leader was seen running.
  returned: when a switchover was done
  type: float
  sample: 4.213
scheduled:
  description: Whether the switchover was scheduled rather than run now.
  returned: success
  type: bool
  sample: false
scheduled_at:
  description: When the scheduled switchover will run.
  returned: when scheduled
  type: str
  sample: "2025-01-10T02:00:00+00:00"
checkpoint:
  description: Whether C(CHECKPOINT) was run on the old leader.
  returned: success
  type: bool
  sample: true
patroni_message:
  description: Patroni's answer to the request.
  returned: when a request was sent
  type: str
  sample: Successfully switched over to "db2"
candidates:
  description: Every replica with the reasons it may not be promoted (empty list when eligible).
  returned: when the replicas were checked, also when the module refuses because of them
  type: dict
  sample: {"db2": [], "db3": ["state is starting, not streaming"]}
"""

import datetime
import time
import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.neurondb.ha.plugins.module_utils.patroni import (
    PATRONI_REQUIRED_BY,
    PATRONI_REQUIRED_TOGETHER,
    Cluster,
    Member,
    PatroniClient,
    PatroniError,
    PatroniTimeoutError,
    client_from_module,
    dcs_settings,
    find_member,
    leader_member,
    patroni_argument_spec,
    synchronous_mode,
    wait_for_new_leader,
)
from ansible_collections.neurondb.ha.plugins.module_utils.postgres import (
    PG_ERRORS,
    conninfo_from_params,
    describe_conninfo,
    postgres_argument_spec,
    require_psycopg,
    run_checkpoint,
)


class Refused(Exception):
    """The switchover is not safe or not possible; nothing was changed."""

    def __init__(self, reason: str, candidates: t.Dict[str, t.List[str]] | None = None) -> None:
        super().__init__(reason)
        self.candidates = candidates


def ineligibility(
    member: Member, leader: Member, max_lag_bytes: int, sync_mode: str, scheduled: bool = False
) -> t.List[str]:
    """Reasons ``member`` must not be promoted now; empty when it may."""
    if member["is_leader"]:
        return ["is the leader"]
    reasons = []
    if member["nofailover"]:
        reasons.append("tagged nofailover" if member["failover_priority"] > 0 else "failover_priority <= 0")
    if scheduled:
        return reasons  # health is only meaningful when the time comes
    if member["state"] != "streaming":
        reasons.append(f"state is {member['state']}, not streaming")
    if leader["timeline"] is not None and member["timeline"] is None:
        # Patroni shows none for a moment, e.g. while the member reconnects after a switchover.
        reasons.append(f"timeline unknown (the leader is on {leader['timeline']})")
    elif leader["timeline"] is not None and member["timeline"] != leader["timeline"]:
        reasons.append(f"on timeline {member['timeline']}, the leader on {leader['timeline']}")
    if member["lag"] is None:
        reasons.append("lag unknown")
    elif member["lag"] > max_lag_bytes:
        reasons.append(f"{member['lag']} bytes behind (max {max_lag_bytes})")
    if sync_mode == "on" and member["role"] != "sync_standby":
        reasons.append("not a synchronous standby (synchronous_mode is on)")
    return reasons


def rank(member: Member) -> t.Tuple[t.Any, ...]:
    """Least lag first; on a tie prefer synchronous standbys, then failover_priority, then the name."""
    return (member["lag"], member["role"] != "sync_standby", -member["failover_priority"], member["name"])


def parse_schedule(value: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"scheduled_at {value!r} is not an ISO 8601 timestamp") from None
    if when.tzinfo is None:
        raise Refused(f"scheduled_at {value!r} has no time zone; Patroni requires one")
    return when


def same_schedule(existing: t.Dict[str, t.Any], leader: str, candidate: str | None, when: datetime.datetime) -> bool:
    try:
        at = datetime.datetime.fromisoformat(str(existing.get("at")).replace("Z", "+00:00"))
    except ValueError:
        return False
    return existing.get("from") == leader and existing.get("to") == candidate and at == when


def plan(
    cluster: Cluster,
    config: t.Dict[str, t.Any],
    *,
    candidate: str | None,
    expected_leader: str | None,
    max_lag_bytes: int | None,
    scheduled_at: str | None,
) -> t.Dict[str, t.Any]:
    """Decide what to do. Raises Refused with the reason when the switchover is unsafe.

    Returns ``{'action': 'none'|'switchover'|'schedule', 'leader', 'candidate', 'candidates'}``.
    """
    leader = leader_member(cluster)
    if leader is None:
        raise Refused("the cluster has no leader; a switchover needs a healthy leader (this would be a failover)")
    if candidate and candidate == leader["name"]:
        return {"action": "none", "leader": leader, "candidate": leader, "candidates": {}}
    if expected_leader and expected_leader != leader["name"]:
        raise Refused(f"{leader['name']} leads, not {expected_leader} as expected")
    if cluster["paused"]:
        raise Refused("the cluster is in maintenance mode (paused); resume it first")

    when = parse_schedule(scheduled_at) if scheduled_at else None
    existing = cluster["scheduled_switchover"]
    if existing:
        if when and same_schedule(existing, leader["name"], candidate, when):
            return {"action": "none", "leader": leader, "candidate": None, "candidates": {}}
        raise Refused(f"a switchover is already scheduled: {existing}")

    if max_lag_bytes is None:
        max_lag_bytes = dcs_settings(config)["maximum_lag_on_failover"]
    sync_mode = synchronous_mode(config)
    replicas = [m for m in cluster["members"] if not m["is_leader"]]
    candidates = {m["name"]: ineligibility(m, leader, max_lag_bytes, sync_mode, scheduled=bool(when)) for m in replicas}

    if candidate:
        member = find_member(cluster, candidate)
        if member is None:
            raise Refused(f"candidate {candidate} is not a member of the cluster")
        if candidates[candidate]:
            raise Refused(f"candidate {candidate} is not eligible: {'; '.join(candidates[candidate])}", candidates)
        chosen: Member | None = member
    elif when:
        chosen = None  # Patroni picks when the time comes
    else:
        eligible = sorted((m for m in replicas if not candidates[m["name"]]), key=rank)
        if not eligible:
            detail = "; ".join(f"{name}: {', '.join(why)}" for name, why in candidates.items()) or "no replicas"
            raise Refused(f"no replica is eligible ({detail})", candidates)
        chosen = eligible[0]
    return {
        "action": "schedule" if when else "switchover",
        "leader": leader,
        "candidate": chosen,
        "candidates": candidates,
    }


def own_timeline(
    client: PatroniClient, member: Member, min_timeline: int | None, timeout: float, interval: float
) -> int | None:
    """The timeline the member reports itself (GET /patroni), waiting up to
    ``timeout`` seconds for one of at least ``min_timeline``.

    GET /cluster shows a newly promoted leader's timeline only once the leader
    has written its member key again in its next HA loop (up to loop_wait
    seconds later), and the member itself knows it once PostgreSQL finished
    promoting, a moment after Patroni took the leader lock.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.get_json("/patroni", url=client.member_url(member), member=member["name"], retries=0)
        except PatroniError:
            status = None
        timeline = status.get("timeline") if isinstance(status, dict) else None
        known = isinstance(timeline, int) and not isinstance(timeline, bool)
        if known and (min_timeline is None or timeline >= min_timeline):
            return timeline
        if time.monotonic() + interval > deadline:
            return None
        time.sleep(interval)


def switchover_http_timeout(config: t.Dict[str, t.Any], timeout: int) -> float:
    """Patroni holds the request while it polls, about 2 * max(10, loop_wait) s."""
    return max(float(timeout), 2 * max(10, dcs_settings(config)["loop_wait"]) + 15)


def execute(
    module: AnsibleModule, client: PatroniClient, decision: t.Dict[str, t.Any], config: t.Dict[str, t.Any]
) -> t.Dict[str, t.Any]:
    """Send the switchover and wait for its outcome. Returns the module result."""
    p = module.params
    leader: Member = decision["leader"]
    candidate: Member | None = decision["candidate"]
    body: t.Dict[str, t.Any] = {"leader": leader["name"]}
    if candidate:
        body["candidate"] = candidate["name"]
    if p["scheduled_at"]:
        body["scheduled_at"] = p["scheduled_at"]
    result: t.Dict[str, t.Any] = {"old_leader": leader["name"], "candidates": decision["candidates"]}

    started = time.monotonic()
    message = ""
    try:
        resp = client.action(
            "POST",
            "/switchover",
            body,
            url=client.member_url(leader),
            member=leader["name"],
            timeout=switchover_http_timeout(config, p["timeout"]),
        )
        message = resp.message
    except PatroniError as exc:
        unknown = exc.outcome_unknown or (exc.status == 503 and "status unknown" in exc.reason.lower())
        failed_503 = exc.status == 503 and not unknown
        if not (unknown or failed_503):
            # 400/401/403/412/422...: Patroni refused; nothing happened.
            module.fail_json(msg=str(exc), error=exc.as_dict(), **result)
        message = str(exc)
        if failed_503:
            # 'Switchover failed': the failover key is gone without a new
            # leader. Look once, in case the leader moved meanwhile.
            current = client.cluster()
            if current["leader"] in (None, leader["name"]):
                module.fail_json(msg=str(exc), error=exc.as_dict(), **result)
    else:
        if resp.status == 202:
            result.update(scheduled=True, scheduled_at=p["scheduled_at"], patroni_message=message, changed=True)
            return result

    # The lock moved (200), or the outcome is unknown: watch the cluster.
    min_timeline = None
    if leader["role"] == "leader" and leader["timeline"] is not None:
        min_timeline = leader["timeline"] + 1  # promotion starts a new timeline (not in standby clusters)
    try:
        new_leader = wait_for_new_leader(
            client,
            leader["name"],
            timeout=p["wait_timeout"],
            interval=p["poll_interval"],
            min_timeline=min_timeline,
        )[1]
    except PatroniTimeoutError as exc:
        module.fail_json(
            msg=f"Switchover outcome unknown ({message}); {exc.reason}. The request may still be pending in the DCS.",
            patroni_message=message,
            **result,
        )
    elapsed = round(time.monotonic() - started, 3)
    timeline = new_leader["timeline"]
    if timeline is None:
        timeline = own_timeline(client, new_leader, min_timeline, timeout=15, interval=p["poll_interval"])
    result.update(
        changed=True,
        new_leader=new_leader["name"],
        timeline=timeline,
        elapsed=elapsed,
        scheduled=False,
        patroni_message=message,
    )
    if candidate and new_leader["name"] != candidate["name"]:
        module.fail_json(
            msg=f"Patroni promoted {new_leader['name']} instead of the requested {candidate['name']}", **result
        )
    return result


def main() -> None:
    argument_spec = patroni_argument_spec()
    argument_spec.update(postgres_argument_spec())
    argument_spec.update(
        candidate=dict(type="str"),
        leader=dict(type="str"),
        max_lag_bytes=dict(type="int"),
        scheduled_at=dict(type="str"),
        checkpoint=dict(type="bool", default=False),
        wait_timeout=dict(type="int", default=60),
        poll_interval=dict(type="float", default=1.0),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=PATRONI_REQUIRED_TOGETHER,
        required_by=PATRONI_REQUIRED_BY,
        supports_check_mode=True,
    )
    p = module.params
    if p["checkpoint"] and p["scheduled_at"]:
        module.fail_json(msg="checkpoint=true only helps a switchover run now, not a scheduled one")
    if p["checkpoint"]:
        require_psycopg(module, "to run CHECKPOINT on the leader (checkpoint=true)")
    client = client_from_module(module)

    try:
        cluster = client.cluster()
        config = client.config()
        decision = plan(
            cluster,
            config,
            candidate=p["candidate"],
            expected_leader=p["leader"],
            max_lag_bytes=p["max_lag_bytes"],
            scheduled_at=p["scheduled_at"],
        )
    except Refused as exc:
        extra = {"candidates": exc.candidates} if exc.candidates is not None else {}
        module.fail_json(msg=f"Switchover refused: {exc}", **extra)
    except PatroniError as exc:
        module.fail_json(msg=str(exc), error=exc.as_dict())

    leader = decision["leader"]
    candidate = decision["candidate"]
    if decision["action"] == "none":
        module.exit_json(
            changed=False,
            msg=f"{leader['name']} already leads" if candidate else "this switchover is already scheduled",
            old_leader=leader["name"],
            new_leader=leader["name"],
            timeline=leader["timeline"],
            scheduled=bool(p["scheduled_at"]),
            checkpoint=False,
            candidates={},
        )

    if module.check_mode:
        target = candidate["name"] if candidate else None
        module.exit_json(
            changed=True,
            msg=f"would switch over from {leader['name']} to {target or 'the member Patroni picks'}",
            old_leader=leader["name"],
            would_switch_to=target,
            scheduled=decision["action"] == "schedule",
            checkpoint=False,
            candidates=decision["candidates"],
        )

    checkpointed = False
    if p["checkpoint"]:
        conninfo = conninfo_from_params(p, leader["host"], leader["port"])
        try:
            run_checkpoint(conninfo)
        except PG_ERRORS as exc:
            module.fail_json(msg=f"CHECKPOINT on the leader ({describe_conninfo(conninfo)}) failed: {exc}")
        checkpointed = True

    try:
        result = execute(module, client, decision, config)
    except PatroniError as exc:
        module.fail_json(msg=str(exc), error=exc.as_dict())
    result.setdefault("changed", True)
    new = result.get("new_leader")
    msg = f"switched over from {leader['name']} to {new}" if new else f"switchover scheduled at {p['scheduled_at']}"
    module.exit_json(msg=msg, checkpoint=checkpointed, **result)


if __name__ == "__main__":
    main()
