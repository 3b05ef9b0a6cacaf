-- NeuronAgent schema (neurondb.ha reference build). Idempotent: safe to apply again.
--
-- Before it, a superuser creates the extensions it needs in the database
-- (they are not trusted extensions, and this file never creates them):
--   CREATE EXTENSION IF NOT EXISTS "uuid-ossp";   -- uuid_generate_v4()
--   CREATE EXTENSION IF NOT EXISTS pgcrypto;
--   CREATE EXTENSION IF NOT EXISTS neurondb;      -- or pgvector's "vector": the vector type
-- Apply it as the agent's database role (or its owner), on the primary.
--
-- The agent names these tables unqualified: its sessions need
-- search_path = neurondb_agent, public (its startup parameter, or the role's
-- setting where a pooler drops startup parameters).

CREATE SCHEMA IF NOT EXISTS neurondb_agent;

CREATE TABLE IF NOT EXISTS neurondb_agent.api_keys (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    name text NOT NULL DEFAULT 'default',
    -- The first characters of the key, to tell keys apart; never enough to use one.
    key_prefix text NOT NULL,
    -- Hex SHA-256 of the whole key: the key itself is never stored.
    key_hash text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at timestamptz
);

CREATE TABLE IF NOT EXISTS neurondb_agent.agents (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    name text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT '',
    embedding vector(3),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS agents_created_at_idx ON neurondb_agent.agents (created_at);
