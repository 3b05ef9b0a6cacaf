-- NeuronDesktop API schema (neurondb.ha reference build). Idempotent: safe to apply again.
--
-- Before it, a superuser creates the extensions it needs in the database
-- (by default neurondesk):
--   CREATE EXTENSION IF NOT EXISTS "uuid-ossp";   -- uuid_generate_v4()
--   CREATE EXTENSION IF NOT EXISTS pgcrypto;      -- gen_random_bytes()
-- The API refuses to start while these tables are missing.

CREATE TABLE IF NOT EXISTS users (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    username text NOT NULL UNIQUE,
    -- scrypt$N$r$p$salt$hash (base64): never the password itself.
    password_hash text NOT NULL,
    is_admin boolean NOT NULL DEFAULT false,
    -- Carried in every token the API issues; changing it revokes them all.
    token_salt text NOT NULL DEFAULT encode(gen_random_bytes(16), 'hex'),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A profile is one NeuronDB deployment the desktop talks to: its agent, its
-- database, and the MCP binary the API spawns for it. The first start of the
-- API writes the default profile from its environment; later starts read it.
CREATE TABLE IF NOT EXISTS profiles (
    id uuid PRIMARY KEY DEFAULT uuid_generate_v4(),
    name text NOT NULL UNIQUE,
    user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    is_default boolean NOT NULL DEFAULT false,
    agent_endpoint text,
    agent_api_key text,
    neurondb_host text,
    neurondb_port integer,
    neurondb_database text,
    neurondb_user text,
    neurondb_password text,
    mcp_binary_path text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- At most one default profile, even when two API replicas start at once.
CREATE UNIQUE INDEX IF NOT EXISTS profiles_one_default ON profiles (is_default) WHERE is_default;
