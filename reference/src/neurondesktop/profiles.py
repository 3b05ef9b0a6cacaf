"""The users and profiles tables: the schema check, the first start, and reads."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from neuronref import env
from neuronref.logs import fields

from . import secrets_util

REQUIRED_RELATIONS = ("users", "profiles")
# pg_advisory_xact_lock key serialising first starts ("NDSK"); it ends with the transaction.
BOOTSTRAP_LOCK = 0x4E44534B
DEFAULT_PROFILE = "default"
ADMIN_USER = "admin"

PROFILE_COLUMNS = (
    "id::text, name, is_default, agent_endpoint, agent_api_key, neurondb_host, neurondb_port,"
    " neurondb_database, neurondb_user, neurondb_password, mcp_binary_path"
)


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    is_default: bool
    agent_endpoint: str | None
    agent_api_key: str | None = field(repr=False)
    neurondb_host: str | None
    neurondb_port: int | None
    neurondb_database: str | None
    neurondb_user: str | None
    neurondb_password: str | None = field(repr=False)
    mcp_binary_path: str | None = None

    def public(self) -> dict[str, Any]:
        """What the API shows: no key, no password."""
        return {
            "id": self.id,
            "name": self.name,
            "is_default": self.is_default,
            "agent_endpoint": self.agent_endpoint,
            "mcp_binary_path": self.mcp_binary_path,
            "neurondb_host": self.neurondb_host,
            "neurondb_port": self.neurondb_port,
            "neurondb_database": self.neurondb_database,
            "neurondb_user": self.neurondb_user,
        }


def missing_relation(conn: psycopg.Connection[Any]) -> str | None:
    for name in REQUIRED_RELATIONS:
        row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
        if row is None or row[0] is None:
            return name
    return None


@dataclass(frozen=True)
class FirstStart:
    """The variables read on the first start only; later starts never look at them."""

    admin_password: str | None = field(repr=False)
    agent_endpoint: str | None
    agent_api_key: str | None = field(repr=False)
    neurondb_host: str | None = None
    neurondb_port: int | None = None
    neurondb_database: str | None = None
    neurondb_user: str | None = None
    neurondb_password: str | None = field(default=None, repr=False)
    mcp_binary_path: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FirstStart:
        port = env.text(environ, "NEURONDB_PORT")
        return cls(
            admin_password=env.secret(environ, "ADMIN_PASSWORD"),
            agent_endpoint=env.text(environ, "NEURONAGENT_ENDPOINT"),
            agent_api_key=env.secret(environ, "NEURONAGENT_API_KEY"),
            neurondb_host=env.text(environ, "NEURONDB_HOST"),
            neurondb_port=None if port is None else env.parse_port("NEURONDB_PORT", port),
            neurondb_database=env.text(environ, "NEURONDB_DATABASE"),
            neurondb_user=env.text(environ, "NEURONDB_USER"),
            neurondb_password=env.secret(environ, "NEURONDB_PASSWORD"),
            mcp_binary_path=env.text(environ, "NEURONMCP_BINARY_PATH"),
        )


def has_default(conn: psycopg.Connection[Any]) -> bool:
    return conn.execute("SELECT 1 FROM profiles WHERE is_default").fetchone() is not None


def bootstrap(conn: psycopg.Connection[Any], environ: Mapping[str, str], log: logging.Logger) -> bool:
    """Write the admin user and the default profile when there is no default profile; True when this did.

    Two replicas starting at once: the transaction-scoped advisory lock makes the
    second wait for the first and then find the profile (the unique index on the
    default would stop a second one anyway). It is transaction-scoped so that a
    transaction pool in front of the database keeps it working.
    """
    if has_default(conn):
        return False
    first = FirstStart.from_env(environ)  # ConfigError for a bad NEURONDB_PORT, on the first start only
    password = first.admin_password or secrets_util.temporary_password()
    password_hash = secrets_util.hash_password(password)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (BOOTSTRAP_LOCK,))
        if has_default(conn):
            return False
        row = conn.execute(
            "INSERT INTO users (username, password_hash, is_admin) VALUES (%s, %s, true)"
            " ON CONFLICT (username) DO NOTHING RETURNING id",
            (ADMIN_USER, password_hash),
        ).fetchone()
        admin_created = row is not None
        if row is None:
            row = conn.execute("SELECT id FROM users WHERE username = %s", (ADMIN_USER,)).fetchone()
        inserted = conn.execute(
            "INSERT INTO profiles (name, user_id, is_default, agent_endpoint, agent_api_key, neurondb_host,"
            " neurondb_port, neurondb_database, neurondb_user, neurondb_password, mcp_binary_path)"
            " VALUES (%s, %s, true, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id::text",
            (
                DEFAULT_PROFILE,
                row[0] if row else None,
                first.agent_endpoint,
                first.agent_api_key,
                first.neurondb_host,
                first.neurondb_port,
                first.neurondb_database,
                first.neurondb_user,
                first.neurondb_password,
                first.mcp_binary_path,
            ),
        ).fetchone()
    if inserted is None:
        return False
    log.info("first start: wrote the default profile", extra=fields(profile=inserted[0]))
    if admin_created and first.admin_password is None:
        # Deliberate, as the real API does: the only way to learn the generated password.
        log.warning(
            "ADMIN_PASSWORD is not set: generated a temporary admin password; sign in and change it",
            extra=fields(username=ADMIN_USER, temporary_password=password),
        )
    return True


def _profile(row: tuple[Any, ...]) -> Profile:
    return Profile(*row)


def list_profiles(conn: psycopg.Connection[Any]) -> list[Profile]:
    return [_profile(row) for row in conn.execute(f"SELECT {PROFILE_COLUMNS} FROM profiles ORDER BY created_at, id")]


def get_profile(conn: psycopg.Connection[Any], profile_id: str) -> Profile | None:
    row = conn.execute(
        f"SELECT {PROFILE_COLUMNS} FROM profiles WHERE id::text = %s",
        (profile_id,),
    ).fetchone()
    return None if row is None else _profile(row)


def user_for_login(conn: psycopg.Connection[Any], username: str) -> tuple[str, str, str] | None:
    """(id, password hash, token salt) of a user."""
    row = conn.execute(
        "SELECT id::text, password_hash, token_salt FROM users WHERE username = %s", (username,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def token_valid(conn: psycopg.Connection[Any], user_id: str, token_salt: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM users WHERE id::text = %s AND token_salt = %s",
        (user_id, token_salt),
    ).fetchone()
    return row is not None
