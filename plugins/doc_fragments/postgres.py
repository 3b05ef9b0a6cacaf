# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""PostgreSQL connection options of the modules that query the leader directly."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  db_host:
    description:
      - Host of the PostgreSQL leader, or a directory holding its Unix socket.
      - Defaults to the leader's C(host) as reported by Patroni's C(/cluster) (its C(postgresql.connect_address)).
    type: str
  db_port:
    description:
      - Port of the PostgreSQL leader. Defaults to the leader's port from C(/cluster), else 5432.
    type: int
  db_user:
    description:
      - PostgreSQL role to connect as.
    type: str
    default: postgres
  db_password:
    description:
      - Password of O(db_user). Leave unset to rely on C(.pgpass), peer or certificate authentication.
    type: str
  db_name:
    description:
      - Database to connect to.
    type: str
    default: postgres
  db_sslmode:
    description:
      - libpq C(sslmode) of the connection.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  db_sslrootcert:
    description:
      - CA certificate file used to verify the server with O(db_sslmode=verify-ca) or O(db_sslmode=verify-full).
    type: path
  db_connect_timeout:
    description:
      - Seconds to wait for the PostgreSQL connection.
    type: int
    default: 10
requirements:
  - psycopg >= 3.1 (psycopg 3) on the host running the module, for the options that connect to PostgreSQL.
"""
