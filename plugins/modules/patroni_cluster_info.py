#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: patroni_cluster_info
short_description: Report the state of a Patroni cluster
description:
  - Reads Patroni's C(/cluster), C(/config) and C(/history) REST endpoints and returns the leader, the members with
    their role, state, timeline and replication lag, maintenance mode, any scheduled switchover, the dynamic (DCS)
    configuration and the history of promotions.
  - Never changes anything.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  history:
    description:
      - Whether to read C(/history). Long-lived clusters can have many timelines.
    type: bool
    default: true
extends_documentation_fragment:
  - neurondb.ha.patroni
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - Patroni computes the replicas' lag against the leader's WAL position that the leader writes to the DCS every
    C(loop_wait) seconds, so the figures can be that much out of date.
seealso:
  - module: neurondb.ha.replication_lag
  - module: neurondb.ha.patroni_switchover
"""

EXAMPLES = r"""
- name: Read the cluster state
  neurondb.ha.patroni_cluster_info:
    api_url:
      - https://db1:8008
      - https://db2:8008
      - https://db3:8008
    ca_path: /etc/patroni/ca.pem
  register: patroni
  run_once: true
  delegate_to: localhost

- name: Show who leads
  ansible.builtin.debug:
    msg: "{{ patroni.leader }} leads; lag of each replica: {{ patroni.members | items2dict('name', 'lag') }}"

- name: Refuse to go on in maintenance mode
  ansible.builtin.assert:
    that: not patroni.paused
    fail_msg: Patroni is paused (maintenance mode)
"""

RETURN = r"""
scope:
  description: Name of the cluster (Patroni's C(scope)).
  returned: success
  type: str
  sample: neurondb
leader:
  description: Name of the member holding the leader lock; null when the cluster has no leader.
  returned: success
  type: str
  sample: db1
paused:
  description: Whether the cluster is in maintenance mode (C(pause)), where Patroni does not fail over.
  returned: success
  type: bool
  sample: false
scheduled_switchover:
  description: The scheduled switchover, as Patroni reports it (C(at), C(from), C(to)); null when none.
  returned: success
  type: dict
  sample: {"at": "2025-01-10T02:00:00+00:00", "from": "db1", "to": "db2"}
members:
  description: The cluster members, sorted by name.
  returned: success
  type: list
  elements: dict
  contains:
    name:
      description: Member name.
      type: str
      sample: db2
    role:
      description: One of V(leader), V(standby_leader), V(sync_standby), V(quorum_standby), V(replica).
      type: str
      sample: replica
    state:
      description: >-
        Patroni's state; for replicas the replication state (V(streaming), V(in archive recovery)) when known,
        otherwise the PostgreSQL state (V(running), V(starting), V(stopped), ...).
      type: str
      sample: streaming
    host:
      description: PostgreSQL host (C(postgresql.connect_address)).
      type: str
      sample: 10.0.0.12
    port:
      description: PostgreSQL port.
      type: int
      sample: 5432
    api_url:
      description: REST API URL the member advertises.
      type: str
      sample: https://10.0.0.12:8008/patroni
    timeline:
      description: PostgreSQL timeline; null when unknown.
      type: int
      sample: 4
    lag:
      description: >-
        Replication lag in bytes: the largest of Patroni's C(lag), C(receive_lag) and C(replay_lag) (so the replay
        lag on Patroni 4). 0 for the leader, null when Patroni reports it as unknown.
      type: int
      sample: 0
    receive_lag:
      description: Bytes between the leader's position and WAL received by the member (Patroni 4); null if unknown.
      type: int
      sample: 0
    replay_lag:
      description: Bytes between the leader's position and WAL replayed by the member (Patroni 4); null if unknown.
      type: int
      sample: 0
    lsn:
      description: WAL position of the member as Patroni reports it (C(X/Y)); null when unknown or for the leader.
      type: str
      sample: 0/4000060
    receive_lsn:
      description: Last received WAL position (Patroni 4).
      type: str
      sample: 0/4000060
    replay_lsn:
      description: Last replayed WAL position (Patroni 4).
      type: str
      sample: 0/4000060
    tags:
      description: Tags of the member (C(nofailover), C(noloadbalance), C(replicatefrom), ...).
      type: dict
      sample: {}
    nofailover:
      description: Whether the member may never be promoted (tag C(nofailover), or C(failover_priority) <= 0).
      type: bool
      sample: false
    failover_priority:
      description: Tag C(failover_priority), 1 when not set.
      type: int
      sample: 1
    pending_restart:
      description: Whether PostgreSQL must be restarted to apply changed parameters.
      type: bool
      sample: false
    pending_restart_reason:
      description: Parameters waiting for a restart, with old and new values (Patroni 4).
      type: dict
      sample: {"max_connections": {"old_value": "100", "new_value": "200"}}
    scheduled_restart:
      description: Scheduled restart, if any.
      type: dict
      sample: null
    is_leader:
      description: Whether this member holds the leader lock.
      type: bool
      sample: false
dcs:
  description: The HA settings of the dynamic configuration, with Patroni's defaults where not set.
  returned: success
  type: dict
  contains:
    ttl:
      description: Leader lock time to live, seconds.
      type: int
      sample: 30
    loop_wait:
      description: Seconds between HA loop runs.
      type: int
      sample: 10
    retry_timeout:
      description: Seconds before DCS and PostgreSQL operations are given up.
      type: int
      sample: 10
    maximum_lag_on_failover:
      description: Bytes a replica may lag to be a failover candidate.
      type: int
      sample: 1048576
    synchronous_mode:
      description: Value of C(synchronous_mode) (true, false or V(quorum)).
      type: raw
      sample: false
config:
  description: The whole dynamic configuration as returned by C(GET /config).
  returned: success
  type: dict
  sample: {"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": 200}}}
history:
  description: Promotions, oldest first, from C(GET /history). Empty when O(history=false).
  returned: success
  type: list
  elements: dict
  contains:
    timeline:
      description: Timeline that ended with this promotion.
      type: int
      sample: 1
    lsn:
      description: WAL position (bytes) where the timeline was switched.
      type: int
      sample: 25623960
    reason:
      description: Reason recorded in the timeline history file.
      type: str
      sample: no recovery target specified
    timestamp:
      description: When the new timeline was created.
      type: str
      sample: "2025-01-10T02:00:03+00:00"
    new_leader:
      description: Member promoted (newer Patroni versions); null when not recorded.
      type: str
      sample: db2
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.neurondb.ha.plugins.module_utils.patroni import (
    PATRONI_REQUIRED_BY,
    PATRONI_REQUIRED_TOGETHER,
    PatroniError,
    client_from_module,
    dcs_settings,
    patroni_argument_spec,
)


def gather(client: t.Any, with_history: bool) -> t.Dict[str, t.Any]:
    cluster = client.cluster()
    config = client.config()
    return dict(
        scope=cluster["scope"],
        leader=cluster["leader"],
        paused=cluster["paused"],
        scheduled_switchover=cluster["scheduled_switchover"],
        members=cluster["members"],
        dcs=dcs_settings(config),
        config=config,
        history=client.history() if with_history else [],
    )


def main() -> None:
    argument_spec = patroni_argument_spec()
    argument_spec.update(history=dict(type="bool", default=True))
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=PATRONI_REQUIRED_TOGETHER,
        required_by=PATRONI_REQUIRED_BY,
        supports_check_mode=True,
    )
    client = client_from_module(module)
    try:
        result = gather(client, module.params["history"])
    except PatroniError as exc:
        module.fail_json(msg=str(exc), error=exc.as_dict())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
