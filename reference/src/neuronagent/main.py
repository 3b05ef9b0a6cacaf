"""neuronagent: serve the agent API, or generate-key."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import psycopg
from neuronref import VERSION, logs
from neuronref.cli import Parser
from neuronref.db import Pool, PoolTimeout, first_line
from neuronref.env import ConfigError
from neuronref.httpd import HttpService, stop_on_signals
from neuronref.logs import fields
from neuronref.metrics import Metrics

from . import config as agent_config
from . import store
from .app import AgentApp
from .events import SessionBroken, SessionGuard

SERVICE = "neuronagent"


def parse_args(argv: list[str] | None) -> tuple[Path | None, str | None, str]:
    parser = Parser(prog=SERVICE, description="NeuronAgent (reference build); settings from the environment.")
    parser.add_argument("-c", "--config", type=Path, help="YAML settings file; the environment overrides it")
    parser.add_argument("--version", action="version", version=f"{SERVICE} {VERSION} (reference)")
    commands = parser.add_subparsers(dest="command")
    generate = commands.add_parser("generate-key", help="create an API key and print it (only it) on stdout")
    generate.add_argument("--name", default="default", help="a label stored with the key (default: default)")
    args = parser.parse_args(argv)
    return args.config, args.command, getattr(args, "name", "default")


def main(argv: list[str] | None = None) -> int:
    config_file, command, key_name = parse_args(argv)
    try:
        settings = agent_config.load(os.environ, config_file)
    except ConfigError as exc:
        logs.early_error(SERVICE, f"configuration error: {exc}", os.environ.get("LOG_FORMAT"))
        return 1
    log = logs.setup(SERVICE, settings.log_level, settings.log_format)
    if command == "generate-key":
        return generate_key(settings, key_name, log)
    return serve(settings, log)


def generate_key(settings: agent_config.AgentConfig, name: str, log: logging.Logger) -> int:
    try:
        with settings.db.connect() as conn:
            key, key_id = store.insert_key(conn, name)
    except psycopg.Error as exc:
        log.error("cannot create an API key", extra=fields(error=first_line(exc), db=settings.db.describe()))
        return 1
    log.info("created an API key", extra=fields(id=key_id, name=name, prefix=key[:12]))
    print(key, flush=True)
    return 0


def serve(settings: agent_config.AgentConfig, log: logging.Logger) -> int:
    pool = Pool(settings.db, settings.max_open, settings.max_idle, settings.conn_max_lifetime)
    try:
        problem = pool.run(store.schema_problem)
    except (PoolTimeout, psycopg.Error) as exc:
        log.error("cannot reach the database", extra=fields(error=first_line(exc), db=settings.db.describe()))
        return 1
    if problem:
        log.error(problem)
    stop = threading.Event()
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        log.error(message)
        fatal.append(message)
        stop.set()

    guard = None
    if settings.events or settings.distributed:
        guard = SessionGuard(settings.db, pool, distributed=settings.distributed, log=log, on_fatal=on_fatal)
        try:
            guard.start()
        except (SessionBroken, psycopg.Error) as exc:
            log.error(str(exc) if isinstance(exc, SessionBroken) else f"events session failed: {first_line(exc)}")
            guard.stop()
            pool.close()
            return 1
    app = AgentApp(pool, Metrics(SERVICE, VERSION), log, settings.events)
    # Before the port opens: a SIGTERM right after it must still end in a clean stop.
    stop_on_signals(stop, log)
    try:
        http = HttpService(app.site(), settings.host, settings.port).start()
    except OSError as exc:
        log.error("cannot listen", extra=fields(address=f"{settings.host}:{settings.port}", error=exc.strerror))
        return 1
    log.info(
        "listening",
        extra=fields(address=f"{settings.host}:{settings.port}", db=settings.db.describe(), version=VERSION),
    )
    while not stop.wait(0.5):
        pass
    http.stop()
    if guard is not None:
        guard.stop()
    pool.close()
    log.info("stopped")
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
