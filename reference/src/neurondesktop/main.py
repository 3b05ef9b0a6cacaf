"""neurondesktop: the NeuronDesktop API."""

from __future__ import annotations

import os
import sys
import threading

import psycopg
from neuronref import VERSION, logs
from neuronref.cli import Parser
from neuronref.db import Pool, PoolTimeout, first_line
from neuronref.env import ConfigError
from neuronref.httpd import HttpService, stop_on_signals
from neuronref.logs import fields
from neuronref.metrics import Metrics

from . import config as desktop_config
from . import profiles
from .app import DesktopApp

SERVICE = "neurondesktop"
SCHEMA_FILE = "/usr/share/neurondesktop/neurondesktop.sql"
MAX_OPEN_CONNS = 10


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=SERVICE, description="NeuronDesktop API (reference build); settings from the environment.")
    parser.add_argument("--version", action="version", version=f"{SERVICE} {VERSION} (reference)")
    parser.parse_args(argv)
    try:
        settings = desktop_config.load(os.environ)
    except ConfigError as exc:
        logs.early_error(SERVICE, f"configuration error: {exc}", os.environ.get("LOG_FORMAT"))
        return 1
    log = logs.setup(SERVICE, settings.log_level, settings.log_format)
    pool = Pool(settings.db, MAX_OPEN_CONNS)
    try:
        pool.run(lambda conn: conn.execute("SELECT 1").fetchone())
    except (PoolTimeout, psycopg.Error) as exc:
        log.error("cannot reach the database", extra=fields(error=first_line(exc), db=settings.db.describe()))
        return 1
    try:
        missing = pool.run(profiles.missing_relation)
        if missing:
            log.error(
                f'relation "{missing}" does not exist: apply {SCHEMA_FILE} to database {settings.db.dbname} first',
                extra=fields(db=settings.db.describe()),
            )
            return 1
        pool.run(lambda conn: profiles.bootstrap(conn, os.environ, log))
    except ConfigError as exc:
        log.error(f"configuration error: {exc}")
        return 1
    except (PoolTimeout, psycopg.Error) as exc:
        log.error("cannot read or write the profiles", extra=fields(error=first_line(exc)))
        return 1
    app = DesktopApp(settings, pool, Metrics(SERVICE, VERSION), log)
    stop = threading.Event()
    # Before the port opens: a SIGTERM right after it must still end in a clean stop.
    stop_on_signals(stop, log)
    try:
        http = HttpService(app.site(), settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen", extra=fields(address=f"{settings.host}:{settings.port}", error=exc.strerror))
        return 1
    try:
        app.start_children()
    except (PoolTimeout, psycopg.Error) as exc:
        log.error("cannot read the profiles", extra=fields(error=first_line(exc)))
        return 1
    http.start()
    log.info(
        "listening",
        extra=fields(address=f"{settings.host}:{settings.port}", auth_mode=settings.auth_mode, version=VERSION),
    )
    while not stop.wait(0.5):
        pass
    http.stop()
    app.stop_children()
    pool.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
