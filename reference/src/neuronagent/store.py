"""The agent's tables, named unqualified on purpose.

The tables live in schema neurondb_agent; the names below resolve there only when
the session's search_path starts with it (the startup parameter the agent sends,
or the role's setting when a pooler drops that parameter). Qualifying them here
would hide exactly the misconfiguration the real service suffers from.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import psycopg

KEY_PREFIX = "nak_"
EVENTS_CHANNEL = "neurondb_agent_events"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """What api_keys.key_hash holds: the hex SHA-256 of the key as the client sends it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def insert_key(conn: psycopg.Connection[Any], name: str) -> tuple[str, str]:
    """A new key: (the key itself, its row id). Only the hash is stored."""
    key = new_key()
    row = conn.execute(
        "INSERT INTO api_keys (name, key_prefix, key_hash) VALUES (%s, %s, %s) RETURNING id::text",
        (name, key[: len(KEY_PREFIX) + 8], key_hash(key)),
    ).fetchone()
    assert row is not None
    return key, row[0]


def key_id(conn: psycopg.Connection[Any], key: str) -> str | None:
    """The id of the live key matching key, None when there is none."""
    row = conn.execute(
        "SELECT id::text FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL",
        (key_hash(key),),
    ).fetchone()
    return None if row is None else row[0]


AGENT_COLUMNS = "id::text, name, description, embedding::text, created_at"


def _agent(row: tuple[Any, ...]) -> dict[str, Any]:
    embedding = json.loads(row[3]) if row[3] else None
    return {"id": row[0], "name": row[1], "description": row[2], "embedding": embedding, "created_at": row[4]}


def list_agents(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute(f"SELECT {AGENT_COLUMNS} FROM agents ORDER BY created_at, id").fetchall()
    return [_agent(row) for row in rows]


def create_agent(
    conn: psycopg.Connection[Any],
    name: str,
    description: str,
    embedding: list[float] | None,
    notify: bool,
) -> dict[str, Any]:
    """Insert an agent (psycopg.errors.UniqueViolation when the name is taken); NOTIFY when events are on."""
    vector_text = None if embedding is None else "[" + ",".join(repr(float(x)) for x in embedding) + "]"
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO agents (name, description, embedding) VALUES (%s, %s, %s) RETURNING {AGENT_COLUMNS}",
            (name, description, vector_text),
        ).fetchone()
        assert row is not None
        agent = _agent(row)
        if notify:
            event = json.dumps({"type": "agent.created", "id": agent["id"], "name": name})
            conn.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, event))
    return agent


def schema_problem(conn: psycopg.Connection[Any]) -> str | None:
    """Why the unqualified names would not reach schema neurondb_agent; None when they do."""
    row = conn.execute(
        "SELECT (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass('api_keys')),"
        " (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass('agents')),"
        " current_setting('search_path')"
    ).fetchone()
    assert row is not None
    api_keys, agents, search_path = row
    if api_keys == agents == "neurondb_agent":
        return None
    return (
        f"tables api_keys and agents do not resolve to schema neurondb_agent with search_path={search_path!r}"
        f" (api_keys: {api_keys or 'not found'}, agents: {agents or 'not found'}), so every API call will fail;"
        " apply neuron-agent.sql, and where a pooler drops the search_path startup parameter set it on the role:"
        " ALTER ROLE ... IN DATABASE ... SET search_path = neurondb_agent, public"
    )
