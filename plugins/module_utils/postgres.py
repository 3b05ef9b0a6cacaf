# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""psycopg 3 helpers for the modules that query PostgreSQL (or PgBouncer) directly.

psycopg is optional: the import is guarded so that modules using only the
Patroni REST API keep working without it, and the ones that need it fail
with Ansible's standard "missing required library" message.
"""

from __future__ import annotations

import traceback
import typing as t

PSYCOPG_IMPORT_ERROR: str | None = None
try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - depends on the target host
    psycopg = None
    dict_row = None
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()

HAS_PSYCOPG = psycopg is not None

# What a failed connection or query raises; catch these, not Exception.
PG_ERRORS: t.Tuple[t.Type[BaseException], ...] = (psycopg.Error, OSError) if psycopg is not None else (OSError,)


def postgres_argument_spec() -> t.Dict[str, t.Any]:
    """Options documented in the ``neurondb.ha.postgres`` doc fragment.

    community.postgresql's names; the db_* names of earlier releases are aliases.
    """
    return dict(
        login_host=dict(type="str", aliases=["db_host"]),
        port=dict(type="int", aliases=["db_port", "login_port"]),
        login_user=dict(type="str", default="postgres", aliases=["db_user"]),
        login_password=dict(type="str", no_log=True, aliases=["db_password"]),
        login_db=dict(type="str", default="postgres", aliases=["db_name"]),
        ssl_mode=dict(
            type="str",
            default="prefer",
            choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
            aliases=["db_sslmode"],
        ),
        ca_cert=dict(type="path", aliases=["db_sslrootcert"]),
        connect_timeout=dict(type="int", default=10, aliases=["db_connect_timeout"]),
    )


def require_psycopg(module: t.Any, reason: str) -> None:
    if not HAS_PSYCOPG:
        from ansible.module_utils.basic import missing_required_lib

        module.fail_json(msg=missing_required_lib("psycopg", reason=reason), exception=PSYCOPG_IMPORT_ERROR)


def conninfo_from_params(
    params: t.Dict[str, t.Any], default_host: str | None = None, default_port: int | None = None
) -> t.Dict[str, t.Any]:
    """libpq keyword arguments from the connection options; the leader's address fills gaps."""
    kwargs: t.Dict[str, t.Any] = {
        "host": params.get("login_host") or default_host,
        "port": params.get("port") or default_port or 5432,
        "user": params.get("login_user"),
        "password": params.get("login_password"),
        "dbname": params.get("login_db"),
        "sslmode": params.get("ssl_mode"),
        "sslrootcert": params.get("ca_cert"),
        "connect_timeout": params.get("connect_timeout"),
        "application_name": "neurondb.ha",
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def describe_conninfo(kwargs: t.Dict[str, t.Any]) -> str:
    """host:port/dbname as user, for messages; never the password."""
    return f"{kwargs.get('host', 'local socket')}:{kwargs.get('port')}/{kwargs.get('dbname')} as {kwargs.get('user')}"


def connect(kwargs: t.Dict[str, t.Any]) -> t.Any:
    """Autocommit connection returning rows as dicts.

    ``prepare_threshold=None`` never prepares statements server side; none of
    our queries repeat, and PgBouncer in transaction mode cannot keep them.
    """
    if psycopg is None:  # callers check with require_psycopg() first
        raise RuntimeError("psycopg is not installed")
    return psycopg.connect(autocommit=True, prepare_threshold=None, row_factory=dict_row, **kwargs)


# -- pg_stat_replication ------------------------------------------------------------

# Run on the leader (PostgreSQL >= 10). Lag in bytes is measured from the
# leader's current WAL position to what each standby has replayed; the
# *_lag intervals are PostgreSQL's own time-based measurements.
PG_STAT_REPLICATION_QUERY = """
SELECT application_name,
       client_addr::text AS client_addr,
       state,
       sync_state,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), sent_lsn)::bigint AS sent_lag_bytes,
       pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::bigint AS replay_lag_bytes,
       EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_seconds
  FROM pg_catalog.pg_stat_replication
"""


def parse_replication_row(row: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
    """Normalize one row of :data:`PG_STAT_REPLICATION_QUERY`.

    PostgreSQL sets ``replay_lag`` to NULL once a standby is fully caught up
    and the primary is idle, so NULL with nothing left to replay means 0 s;
    NULL while bytes are outstanding means unknown (None).
    """
    replay_bytes = row.get("replay_lag_bytes")
    replay_bytes = max(int(replay_bytes), 0) if replay_bytes is not None else None
    seconds = row.get("replay_lag_seconds")
    if seconds is None and replay_bytes == 0:
        seconds = 0.0
    return {
        "name": row.get("application_name"),
        "client_addr": row.get("client_addr"),
        "state": row.get("state"),
        "sync_state": row.get("sync_state"),
        "sent_lag_bytes": row.get("sent_lag_bytes"),
        "replay_lag_bytes": replay_bytes,
        "replay_lag_seconds": float(seconds) if seconds is not None else None,
    }


def query_replication(kwargs: t.Dict[str, t.Any]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """pg_stat_replication on the leader, keyed by application_name (Patroni sets it to the member name)."""
    with connect(kwargs) as conn:
        rows = conn.execute(PG_STAT_REPLICATION_QUERY).fetchall()
    parsed = [parse_replication_row(r) for r in rows]
    return {r["name"]: r for r in parsed if r["name"]}


def run_checkpoint(kwargs: t.Dict[str, t.Any]) -> None:
    """CHECKPOINT needs superuser or, from PostgreSQL 15, pg_checkpoint."""
    with connect(kwargs) as conn:
        conn.execute("CHECKPOINT")
