# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""PostgreSQL connection options of the modules that query the leader directly.

The names are those of community.postgresql (login_host, port, ...); the
db_* names they had before are kept as aliases.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host of the PostgreSQL leader, or a directory holding its Unix socket.
      - Defaults to the leader's C(host) as reported by Patroni's C(/cluster) (its C(postgresql.connect_address)),
        not to the local socket as in community.postgresql - the leader moves, and the module usually runs on
        another host.
    type: str
    aliases: [db_host]
  port:
    description:
      - Port of the PostgreSQL leader.
      - Defaults to the leader's port from C(/cluster), else V(5432) (community.postgresql always defaults to
        V(5432)); a given value applies to whichever member leads.
    type: int
    aliases: [db_port, login_port]
  login_user:
    description:
      - PostgreSQL role to connect as.
    type: str
    default: postgres
    aliases: [db_user]
  login_password:
    description:
      - Password of O(login_user). Leave unset to rely on C(.pgpass), peer or certificate authentication.
    type: str
    aliases: [db_password]
  login_db:
    description:
      - Database to connect to.
      - Defaults to V(postgres), where community.postgresql leaves it to libpq (a database named after the role).
        The queries read cluster-wide views or run C(CHECKPOINT), and C(postgres) exists on every cluster while a
        database named after a monitoring role usually does not.
    type: str
    default: postgres
    aliases: [db_name]
  ssl_mode:
    description:
      - libpq C(sslmode) of the connection - whether TLS is used and how the server's certificate is checked. See
        U(https://www.postgresql.org/docs/current/libpq-ssl.html).
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
    aliases: [db_sslmode]
  ca_cert:
    description:
      - File of CA certificates (libpq C(sslrootcert)) the PostgreSQL server's certificate must chain to with
        O(ssl_mode=verify-ca) or O(ssl_mode=verify-full). The Patroni REST API's CA is C(ca_path), not this.
      - A path on the host running the module (C(~) is expanded), hence of type C(path) rather than C(str) as in
        community.postgresql.
    type: path
    aliases: [db_sslrootcert]
  connect_timeout:
    description:
      - Seconds to wait for the PostgreSQL connection (libpq C(connect_timeout)).
      - community.postgresql has no such option (it takes libpq parameters in C(connect_params)). Defaults to V(10)
        rather than libpq's unlimited wait, so that a leader that does not answer fails the task instead of hanging it.
    type: int
    default: 10
    aliases: [db_connect_timeout]
requirements:
  - psycopg >= 3.1 (psycopg 3) on the host running the module, for the options that connect to PostgreSQL.
"""
