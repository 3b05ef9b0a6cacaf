"""NeuronMCP settings. It reads NEURONDB_* and NEURONMCP_* only: DB_* and SERVER_* belong to the other services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from neuronref import env
from neuronref.db import ConnParams
from neuronref.env import ConfigError

DEFAULT_HTTP_ADDR = ":8080"  # the real default, the agent's port too


@dataclass(frozen=True)
class McpConfig:
    db: ConnParams
    log_level: str
    log_format: str
    http_enabled: bool
    http_host: str
    http_port: int
    auth_disabled: bool
    auth_token: str | None = field(default=None, repr=False)


def load(environ: Mapping[str, str]) -> McpConfig:
    conninfo = env.secret(environ, "NEURONDB_CONNECTION_STRING")
    db = ConnParams(
        host=env.text(environ, "NEURONDB_HOST", "localhost") or "localhost",
        port=env.port(environ, "NEURONDB_PORT", 5432),
        dbname=env.text(environ, "NEURONDB_DATABASE", "postgres") or "postgres",
        user=env.text(environ, "NEURONDB_USER", "postgres") or "postgres",
        password=env.secret(environ, "NEURONDB_PASSWORD"),
        application_name="neurondb-mcp",
        conninfo=conninfo.strip() if conninfo else None,
    )
    log_format = env.choice(environ, "NEURONDB_LOG_FORMAT", "json", ("json", "console", "text"))
    http_enabled = env.boolean(environ, "NEURONMCP_HTTP_ENABLED", False)
    host, port = env.host_port("NEURONMCP_HTTP_ADDR", env.text(environ, "NEURONMCP_HTTP_ADDR", DEFAULT_HTTP_ADDR) or "")
    auth_disabled = env.boolean(environ, "NEURONMCP_AUTH_DISABLED", False)
    token = env.secret(environ, "NEURONMCP_AUTH_TOKEN")
    if http_enabled and not auth_disabled and token is None:
        # The 2026-03 build authenticates HTTP clients by default; without a token no client could.
        raise ConfigError(
            "NEURONMCP_HTTP_ENABLED=true needs NEURONMCP_AUTH_TOKEN (clients send it as Bearer),"
            " or NEURONMCP_AUTH_DISABLED=true"
        )
    return McpConfig(
        db=db,
        log_level=env.choice(environ, "NEURONDB_LOG_LEVEL", "info", env.LOG_LEVELS),
        log_format="console" if log_format == "text" else log_format,
        http_enabled=http_enabled,
        http_host=host,
        http_port=port,
        auth_disabled=auth_disabled,
        auth_token=token,
    )
