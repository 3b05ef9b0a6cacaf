"""NeuronAgent settings: the environment, over an optional YAML file given with -c."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neuronref import env
from neuronref.db import ConnParams
from neuronref.env import ConfigError

# The agent's tables live in schema neurondb_agent and its queries name them
# unqualified: this is the startup parameter the 2026-01 build sends. A pooler
# that drops it (PgBouncer ignores "options") leaves the role's search_path.
SEARCH_PATH_OPTION = "-c search_path=neurondb_agent,public"

# Keys of the -c file, each standing for the environment variable it sets.
FILE_KEYS = {
    "server.host": "SERVER_HOST",
    "server.port": "SERVER_PORT",
    "database.host": "DB_HOST",
    "database.port": "DB_PORT",
    "database.name": "DB_NAME",
    "database.user": "DB_USER",
    "database.password": "DB_PASSWORD",
    "database.max_open_conns": "DB_MAX_OPEN_CONNS",
    "database.max_idle_conns": "DB_MAX_IDLE_CONNS",
    "database.conn_max_lifetime": "DB_CONN_MAX_LIFETIME",
    "logging.level": "LOG_LEVEL",
    "logging.format": "LOG_FORMAT",
    "distributed.enabled": "DISTRIBUTED_ENABLED",
    "events.enabled": "EVENTS_ENABLED",
}


@dataclass(frozen=True)
class AgentConfig:
    host: str
    port: int
    db: ConnParams
    max_open: int
    max_idle: int
    conn_max_lifetime: float | None
    log_level: str
    log_format: str
    distributed: bool
    events: bool


def read_file(path: Path) -> dict[str, str]:
    """The variables a YAML file sets: nested mappings of scalars, the subset the sample uses."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    values: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    for number, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        match = re.fullmatch(r"(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?: +(?P<value>.*))?", line)
        if match is None:
            raise ConfigError(f"{path}:{number}: expected 'key: value' (tabs and lists are not supported)")
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = ".".join([*(name for _, name in stack), match.group("key")])
        value = match.group("value")
        if value is None:
            stack.append((indent, match.group("key")))
            continue
        if key not in FILE_KEYS:
            raise ConfigError(f"{path}:{number}: unknown setting {key!r} (known: {', '.join(FILE_KEYS)})")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[FILE_KEYS[key]] = value
    return values


def load(environ: Mapping[str, str], config_file: Path | None = None) -> AgentConfig:
    """The settings; ConfigError names the first bad one."""
    merged = dict(read_file(config_file)) if config_file else {}
    merged.update({key: value for key, value in environ.items() if value.strip()})
    max_open = env.integer(merged, "DB_MAX_OPEN_CONNS", 25, minimum=1)
    db = ConnParams(
        host=env.text(merged, "DB_HOST", "localhost") or "localhost",
        port=env.port(merged, "DB_PORT", 5432),
        dbname=env.text(merged, "DB_NAME", "neurondb") or "neurondb",
        user=env.text(merged, "DB_USER", "neurondb") or "neurondb",
        password=env.secret(merged, "DB_PASSWORD"),
        sslmode="disable",
        options=SEARCH_PATH_OPTION,
        application_name="neuronagent",
    )
    return AgentConfig(
        host=env.text(merged, "SERVER_HOST", "0.0.0.0") or "0.0.0.0",
        port=env.port(merged, "SERVER_PORT", 8080),
        db=db,
        max_open=max_open,
        max_idle=min(env.integer(merged, "DB_MAX_IDLE_CONNS", min(max_open, 10), minimum=0), max_open),
        conn_max_lifetime=env.duration(merged, "DB_CONN_MAX_LIFETIME", None),
        log_level=env.choice(merged, "LOG_LEVEL", "info", env.LOG_LEVELS),
        log_format=env.choice(merged, "LOG_FORMAT", "json", env.LOG_FORMATS),
        distributed=env.boolean(merged, "DISTRIBUTED_ENABLED", False),
        events=env.boolean(merged, "EVENTS_ENABLED", False),
    )
