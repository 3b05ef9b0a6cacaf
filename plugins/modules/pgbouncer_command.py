#!/usr/bin/python
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
module: pgbouncer_command
short_description: Run a PgBouncer admin console command
description:
  - Connects to the C(pgbouncer) admin database of a PgBouncer and runs C(PAUSE), C(RESUME), C(RECONNECT),
    C(RELOAD), C(WAIT_CLOSE) or a C(SHOW) command.
  - C(PAUSE) and C(RESUME) are idempotent - the module reads C(SHOW STATE) (whole pooler) and C(SHOW DATABASES)
    (column C(paused), for one database) first and reports no change when PgBouncer is already in that state.
  - C(SHOW) commands return their rows.
version_added: 0.1.0
author:
  - neurondb.ha developers (!UNKNOWN)
options:
  command:
    description:
      - Console command to run.
      - V(pause) waits until every server connection is released (in session pooling, until clients disconnect), then
        holds new queries; V(resume) lets them go on.
      - V(reconnect) closes each server connection once released, so that pools reconnect, for example after the
        database host changed.
      - V(reload) re-reads the configuration file.
      - V(wait_close) waits until the server connections closed by V(reconnect) or V(reload) are gone.
      - V(show) returns the rows of C(SHOW) O(show).
    type: str
    required: true
    choices: [pause, resume, reconnect, reload, wait_close, show]
  database:
    description:
      - Limit V(pause), V(resume), V(reconnect) or V(wait_close) to this database of PgBouncer (a name in its
        C([databases]) section). All databases when omitted.
    type: str
  show:
    description:
      - What to show with O(command=show).
    type: str
    choices: [pools, stats, servers, clients, databases, state, lists, users, config, mem, version, totals,
              stats_totals, stats_averages, dns_hosts, dns_zones, sockets, active_sockets]
  login_host:
    description:
      - Host of PgBouncer, or the directory of its Unix socket.
      - Defaults to V(127.0.0.1), where community.postgresql defaults to libpq's local socket - the module runs on
        the PgBouncer host, where the C(pgbouncer) role listens on V(127.0.0.1), while PgBouncer's socket directory
        (C(unix_socket_dir), V(/tmp) unless configured) is often not the one libpq looks in.
    type: str
    default: 127.0.0.1
  port:
    description:
      - Port PgBouncer listens on.
      - Defaults to V(6432), PgBouncer's own default C(listen_port), not to PostgreSQL's V(5432) as in
        community.postgresql.
    type: int
    default: 6432
    aliases: [login_port]
  login_user:
    description:
      - User listed in PgBouncer's C(admin_users) (or C(stats_users) for C(SHOW)).
      - Defaults to V(pgbouncer) rather than V(postgres), the user PgBouncer lets in without C(admin_users) when it
        connects from the Unix socket as the same OS user.
    type: str
    default: pgbouncer
  login_password:
    description:
      - Password of O(login_user).
    type: str
  ssl_mode:
    description:
      - libpq C(sslmode) of the connection - whether TLS is used and how PgBouncer's certificate is checked.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate to verify PgBouncer with O(ssl_mode=verify-ca) or O(ssl_mode=verify-full).
      - A path on the host running the module, hence of type C(path) rather than C(str) as in community.postgresql.
    type: path
  connect_timeout:
    description:
      - Seconds to wait for the connection (libpq C(connect_timeout)).
      - community.postgresql has no such option (it takes libpq parameters in C(connect_params)).
    type: int
    default: 10
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: V(pause), V(resume), V(reconnect) and V(reload) are not run; whether they would change something is
      reported. V(show) and V(wait_close) run.
  diff_mode:
    support: none
  platform:
    platforms: posix
notes:
  - The admin console only speaks the simple query protocol; the module uses a psycopg client-side cursor in
    autocommit mode, which sends plain queries.
  - V(pause) and V(wait_close) block until PgBouncer is done. Bound them with the task's C(timeout) keyword; a
    C(PAUSE) interrupted that way stays in effect until C(RESUME).
requirements:
  - psycopg >= 3.1 (psycopg 3)
seealso:
  - module: neurondb.ha.patroni_switchover
"""

EXAMPLES = r"""
- name: Hold client queries during the switchover
  neurondb.ha.pgbouncer_command:
    command: pause
    database: appdb
    login_password: "{{ vault_pgbouncer_admin_password }}"

- name: Let them go on
  neurondb.ha.pgbouncer_command:
    command: resume
    database: appdb
    login_password: "{{ vault_pgbouncer_admin_password }}"

- name: Reconnect every pool to the new primary
  neurondb.ha.pgbouncer_command:
    command: reconnect
    login_password: "{{ vault_pgbouncer_admin_password }}"

- name: Pool figures
  neurondb.ha.pgbouncer_command:
    command: show
    show: pools
    login_password: "{{ vault_pgbouncer_admin_password }}"
  register: pools

- name: Nobody is waiting for a connection
  ansible.builtin.assert:
    that: pools.rows | map(attribute='cl_waiting') | sum == 0
"""

RETURN = r"""
query:
  description: The console command sent (or that would be sent in check mode).
  returned: always
  type: str
  sample: PAUSE appdb
rows:
  description: Rows returned by the command, one dictionary per row with PgBouncer's column names.
  returned: when O(command=show)
  type: list
  elements: dict
  sample: [{"database": "appdb", "user": "app", "cl_active": 12, "cl_waiting": 0, "sv_active": 3}]
state:
  description: Pooler state from C(SHOW STATE) after the command (V(pause) and V(resume)); null when unsupported.
  returned: when O(command) is V(pause) or V(resume)
  type: dict
  sample: {"active": false, "paused": true, "suspended": false}
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.neurondb.ha.plugins.module_utils.pgbouncer import (
    SHOW_ITEMS,
    STATE_CHANGING,
    already_done,
    build_command,
    decide,
    parse_state,
    paused_databases,
)
from ansible_collections.neurondb.ha.plugins.module_utils.postgres import (
    PG_ERRORS,
    dict_row,
    psycopg,
    require_psycopg,
)


def connect(p: t.Dict[str, t.Any]) -> t.Any:
    """Autocommit connection to the admin console.

    ClientCursor: queries without parameters go out as simple queries, which
    is all the console understands; autocommit: no BEGIN/COMMIT is sent.
    """
    if psycopg is None:  # main() checked; keeps the name defined for type checkers
        raise RuntimeError("psycopg is not installed")
    kwargs = dict(
        host=p["login_host"],
        port=p["port"],
        user=p["login_user"],
        password=p["login_password"],
        dbname="pgbouncer",
        sslmode=p["ssl_mode"],
        sslrootcert=p["ca_cert"],
        connect_timeout=p["connect_timeout"],
    )
    return psycopg.connect(
        autocommit=True,
        prepare_threshold=None,
        cursor_factory=psycopg.ClientCursor,
        row_factory=dict_row,
        **{k: v for k, v in kwargs.items() if v is not None},
    )


def run(conn: t.Any, query: str) -> t.List[t.Dict[str, t.Any]]:
    with conn.cursor() as cur:
        cur.execute(query)
        return [dict(row) for row in cur.fetchall()] if cur.description else []


def read_state(conn: t.Any) -> t.Dict[str, bool] | None:
    """SHOW STATE, or None on a PgBouncer without it."""
    try:
        return parse_state(run(conn, "SHOW STATE"))
    except PG_ERRORS:
        return None


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(
                type="str", required=True, choices=["pause", "resume", "reconnect", "reload", "wait_close", "show"]
            ),
            database=dict(type="str"),
            show=dict(type="str", choices=list(SHOW_ITEMS)),
            login_host=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=6432, aliases=["login_port"]),
            login_user=dict(type="str", default="pgbouncer"),
            login_password=dict(type="str", no_log=True),
            ssl_mode=dict(
                type="str",
                default="prefer",
                choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
            ),
            ca_cert=dict(type="path"),
            connect_timeout=dict(type="int", default=10),
        ),
        required_if=[["command", "show", ["show"]]],
        supports_check_mode=True,
    )
    p = module.params
    command = p["command"]
    try:
        query = build_command(command, p["database"], p["show"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    require_psycopg(module, "to talk to the PgBouncer admin console")

    result: t.Dict[str, t.Any] = {"changed": False, "query": query}
    try:
        with connect(p) as conn:
            if command == "show":
                module.exit_json(rows=run(conn, query), **result)

            if command in ("pause", "resume"):
                state = read_state(conn)
                paused = paused_databases(run(conn, "SHOW DATABASES")) if p["database"] else None
                verdict, reason = decide(command, p["database"], state, paused)
                result["state"] = state
                if verdict == "fail":
                    module.fail_json(msg=reason, **result)
                if verdict == "skip":
                    module.exit_json(msg=reason, **result)

            if module.check_mode and command in STATE_CHANGING:
                result["changed"] = True
                module.exit_json(msg=f"would run {query}", **result)

            try:
                run(conn, query)
            except PG_ERRORS as exc:
                if not already_done(command, str(exc)):
                    raise
                module.exit_json(msg=f"no change: {exc}", **result)
            result["changed"] = command in STATE_CHANGING
            if command in ("pause", "resume"):
                result["state"] = read_state(conn)
    except PG_ERRORS as exc:
        module.fail_json(
            msg=f"PgBouncer at {p['login_host']}:{p['port']} ({query}): {exc}".strip(),
            **result,
        )
    module.exit_json(msg=f"ran {query}", **result)


if __name__ == "__main__":
    main()
