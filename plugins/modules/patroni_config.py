#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: patroni_config
short_description: Manage the dynamic (DCS) configuration of a Patroni cluster
description:
  - Makes the keys given in O(config) part of Patroni's dynamic configuration (C(GET /config), C(PATCH /config)).
    Keys not given are left alone; nested dictionaries such as C(postgresql.parameters) are compared key by key.
  - Reports which members must restart PostgreSQL to apply changed parameters (C(pending_restart)) and, with
    O(restart_pending=true), restarts them one at a time, replicas first and the leader last.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  config:
    description:
      - Desired dynamic configuration, for example C(loop_wait), C(maximum_lag_on_failover) or
        C(postgresql.parameters).
      - A value of V(null) removes the key (Patroni's semantics for C(PATCH /config)), which resets a PostgreSQL
        parameter to the value of Patroni's local configuration or PostgreSQL's default.
      - Values are compared as Patroni compares them, by their text (so V(100) and V("100") are equal).
      - Omit to only report (and with O(restart_pending=true) handle) pending restarts.
    type: dict
  restart_pending:
    description:
      - Restart PostgreSQL on the members flagged C(pending_restart), one at a time (C(POST /restart) with
        C(restart_pending)) - replicas first, then the leader. Each must be running again (replicas streaming again
        when they were) before the next one restarts.
      - The leader is restarted in place only with O(restart_leader=true). Otherwise it stays pending and is returned
        as RV(pending_leader), for the caller to switch over first (M(neurondb.ha.patroni_switchover)) and restart
        it as a replica.
    type: bool
    default: false
  restart_leader:
    description:
      - With O(restart_pending=true), also restart the leader in place, last. That makes the database unavailable
        for writes while PostgreSQL restarts, so it is off unless asked for.
    type: bool
    default: false
  settle_time:
    description:
      - Seconds to wait after changing the configuration before reading the C(pending_restart) flags, which members
        update in their next HA loop.
      - Defaults to the cluster's C(loop_wait) plus 2 seconds when O(restart_pending=true), 0 otherwise.
    type: int
  restart_timeout:
    description:
      - Seconds allowed for each member to restart and be running again.
    type: int
    default: 300
  poll_interval:
    description:
      - Seconds between reads of C(/cluster) while waiting for a restarted member.
    type: float
    default: 2.0
extends_documentation_fragment:
  - neurondb.ha.patroni
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is patched or restarted. Members that only the change itself would flag for a restart cannot be
        predicted; RV(would_restart) lists the members flagged now.
  diff_mode:
    support: full
  platform:
    platforms: posix
seealso:
  - module: neurondb.ha.patroni_cluster_info
  - module: neurondb.ha.patroni_switchover
"""

EXAMPLES = r"""
- name: Tune HA timing and PostgreSQL parameters
  neurondb.ha.patroni_config:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
    api_username: patroni
    api_password: "{{ vault_patroni_api_password }}"
    config:
      loop_wait: 10
      maximum_lag_on_failover: 16777216
      postgresql:
        parameters:
          max_connections: 300
          work_mem: 16MB
          old_setting: null  # removed from the dynamic configuration
  register: patroni_config
  run_once: true
  delegate_to: localhost

- name: Apply parameters that need a restart, replicas first
  neurondb.ha.patroni_config:
    api_url: [https://db1:8008, https://db2:8008, https://db3:8008]
    api_username: patroni
    api_password: "{{ vault_patroni_api_password }}"
    config:
      postgresql:
        parameters:
          shared_buffers: 4GB
    restart_pending: true
  run_once: true
  delegate_to: localhost

- name: Maintenance mode on
  neurondb.ha.patroni_config:
    api_url: [https://db1:8008]
    api_username: patroni
    api_password: "{{ vault_patroni_api_password }}"
    config:
      pause: true
"""

RETURN = r"""
config:
  description: The dynamic configuration after the change (as Patroni returned it), or as it would be in check mode.
  returned: success
  type: dict
  sample: {"loop_wait": 10, "postgresql": {"parameters": {"max_connections": 300}}}
patch:
  description: The keys sent with C(PATCH /config) (or that would be sent); empty when nothing differs.
  returned: success
  type: dict
  sample: {"postgresql": {"parameters": {"max_connections": 300}}}
diff:
  description: The configuration before and after, for C(--diff).
  returned: success
  type: dict
  contains:
    before:
      description: Configuration before.
      type: dict
    after:
      description: Configuration after.
      type: dict
pending_restart:
  description: Members flagged C(pending_restart) after the change (before any restart by this module).
  returned: success
  type: list
  elements: str
  sample: [db1, db2, db3]
restarted:
  description: Members restarted by this module, in order.
  returned: success
  type: list
  elements: str
  sample: [db2, db3, db1]
pending_leader:
  description:
    - The leader, when it is flagged C(pending_restart) and was not restarted (O(restart_leader=false)); empty
      otherwise.
  returned: success
  type: str
  sample: db1
would_restart:
  description: Members that would be restarted, in order, in check mode.
  returned: check mode and O(restart_pending=true)
  type: list
  elements: str
  sample: [db2, db1]
"""

import copy
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
    client_from_module,
    dcs_settings,
    find_member,
    patroni_argument_spec,
    wait_for_cluster,
)


def config_patch(current: t.Dict[str, t.Any], desired: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """The part of ``desired`` that would change ``current`` under PATCH /config.

    Mirrors Patroni's utils.patch_config: null removes a key, dicts merge
    recursively, other values are compared by their str().
    """
    patch: t.Dict[str, t.Any] = {}
    for name, value in desired.items():
        if value is None:
            if current.get(name) is not None:
                patch[name] = None
        elif name not in current:
            patch[name] = value
        elif isinstance(value, dict) and isinstance(current[name], dict):
            sub = config_patch(current[name], value)
            if sub:
                patch[name] = sub
        elif isinstance(value, dict) or str(current[name]) != str(value):
            patch[name] = value
    return patch


def apply_patch(config: t.Dict[str, t.Any], patch: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """A copy of ``config`` with ``patch`` applied as Patroni would."""
    result = copy.deepcopy(config)
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        elif isinstance(value, dict) and isinstance(result.get(name), dict):
            result[name] = apply_patch(result[name], value)
        else:
            result[name] = copy.deepcopy(value)
    return result


def restart_order(cluster: Cluster, leader: bool = True) -> t.List[Member]:
    """Members with pending_restart: replicas by name, then the leader (only when ``leader``)."""
    pending = [m for m in cluster["members"] if m["pending_restart"] and (leader or not m["is_leader"])]
    return sorted(pending, key=lambda m: (m["is_leader"], m["name"]))


def healthy_again(before: Member) -> t.Callable[[Cluster], bool]:
    """The member runs again (replicas: streaming again if they were) and no longer needs a restart."""
    if before["is_leader"]:
        states: t.Tuple[str, ...] = ("running",)
    elif before["state"] == "streaming":
        states = ("streaming",)
    else:
        states = ("running", "streaming", "in archive recovery")

    def check(cluster: Cluster) -> bool:
        member = find_member(cluster, before["name"])
        return bool(member) and member["state"] in states and not member["pending_restart"]

    return check


def restart_members(
    client: PatroniClient, members: t.List[Member], timeout: int, interval: float, restarted: t.List[str]
) -> None:
    """Restart each member in turn; appends to ``restarted`` as it goes so a failure still reports progress."""
    for member in members:
        try:
            client.action(
                "POST",
                "/restart",
                {"restart_pending": True},
                url=client.member_url(member),
                member=member["name"],
                # Patroni answers once PostgreSQL accepts connections again.
                timeout=max(float(client.timeout), float(timeout)),
            )
        except PatroniError as exc:
            if exc.status == 503 and "conditions are not satisfied" in exc.reason:
                continue  # no longer pending (already restarted by someone else)
            if not exc.outcome_unknown:
                raise
            # No answer: the restart may be under way; the wait below decides.
        restarted.append(member["name"])
        wait_for_cluster(
            client,
            healthy_again(member),
            timeout=timeout,
            interval=interval,
            waiting_for=f"{member['name']} to run again without pending restart",
        )


def main() -> None:
    argument_spec = patroni_argument_spec()
    argument_spec.update(
        config=dict(type="dict"),
        restart_pending=dict(type="bool", default=False),
        restart_leader=dict(type="bool", default=False),
        settle_time=dict(type="int"),
        restart_timeout=dict(type="int", default=300),
        poll_interval=dict(type="float", default=2.0),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=PATRONI_REQUIRED_TOGETHER,
        required_by=PATRONI_REQUIRED_BY,
        supports_check_mode=True,
    )
    p = module.params
    client = client_from_module(module)
    result: t.Dict[str, t.Any] = {"changed": False, "restarted": [], "pending_leader": ""}

    try:
        before = client.config()
        patch = config_patch(before, p["config"] or {})
        after = apply_patch(before, patch)
        if patch and not module.check_mode:
            leader = client.cluster()
            target = find_member(leader, leader["leader"]) if leader["leader"] else None
            url = client.member_url(target) if target else client.urls[0]
            after = client.action("PATCH", "/config", patch, url=url, member=target and target["name"]).json
        result.update(
            changed=bool(patch),
            config=after,
            patch=patch,
            diff={"before": before, "after": after},
        )

        settle = p["settle_time"]
        if settle is None:
            settle = dcs_settings(after)["loop_wait"] + 2 if p["restart_pending"] else 0
        if patch and settle > 0 and not module.check_mode:
            time.sleep(settle)  # members pick up the new configuration in their next HA loop
        cluster = client.cluster()
        result["pending_restart"] = sorted(m["name"] for m in restart_order(cluster))
        order = restart_order(cluster, leader=p["restart_leader"])
        if p["restart_pending"] and not p["restart_leader"]:
            result["pending_leader"] = next(
                (m["name"] for m in cluster["members"] if m["is_leader"] and m["pending_restart"]), ""
            )

        if p["restart_pending"] and module.check_mode:
            result["would_restart"] = [m["name"] for m in order]
            result["changed"] = result["changed"] or bool(order)
        elif p["restart_pending"] and order:
            try:
                restart_members(client, order, p["restart_timeout"], p["poll_interval"], result["restarted"])
            finally:
                result["changed"] = result["changed"] or bool(result["restarted"])
    except PatroniError as exc:
        module.fail_json(msg=str(exc), error=exc.as_dict(), **result)

    module.exit_json(**result)


if __name__ == "__main__":
    main()
