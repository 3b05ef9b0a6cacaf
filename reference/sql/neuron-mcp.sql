-- NeuronMCP schema (neurondb.ha reference build). Idempotent: safe to apply again.
--
-- Before it, a superuser creates the extensions it needs in the database:
--   CREATE EXTENSION IF NOT EXISTS pgcrypto;   -- gen_random_bytes()
--   CREATE EXTENSION IF NOT EXISTS neurondb;
-- (The neurondb extension may own a schema named neurondb as well: IF NOT
-- EXISTS below then leaves it as it is.)

CREATE SCHEMA IF NOT EXISTS neurondb;

-- Settings an operator may give the MCP server's tools.
CREATE TABLE IF NOT EXISTS neurondb.mcp_settings (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Tool calls, for an audit trail.
CREATE TABLE IF NOT EXISTS neurondb.mcp_tool_calls (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id text NOT NULL DEFAULT encode(gen_random_bytes(8), 'hex'),
    tool text NOT NULL,
    ok boolean NOT NULL,
    duration_ms double precision,
    called_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS mcp_tool_calls_called_at_idx ON neurondb.mcp_tool_calls (called_at);
