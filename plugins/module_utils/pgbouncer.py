# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Pure logic for PgBouncer admin console commands (no I/O), so it can be unit tested.

Facts about the console (PgBouncer src/admin.c) this relies on:

* A command is ``WORD [WORD] [;]`` where WORD is ``[0-9a-z_]+`` or a
  double-quoted identifier (``""`` escapes a quote). Parameters cannot be
  bound, so names are quoted here.
* Only the simple query protocol is accepted ("extended query protocol not
  supported by admin console").
* ``PAUSE`` fails with 'already suspended/paused' while the pooler is paused
  or suspended; ``RESUME`` fails with 'pooler is not paused/suspended', and
  ``RESUME db`` with 'database db is not paused'.
* A global ``PAUSE`` shows in ``SHOW STATE`` (``paused`` = yes), not in the
  ``paused`` column of ``SHOW DATABASES``, which is for ``PAUSE db`` only.
"""

from __future__ import annotations

import re
import typing as t

COMMANDS = ("pause", "resume", "reconnect", "reload", "wait_close", "show")
# Commands that change what PgBouncer does; skipped in check mode.
STATE_CHANGING = ("pause", "resume", "reconnect", "reload")
# Commands taking an optional database name.
TAKES_DATABASE = ("pause", "resume", "reconnect", "wait_close")
SHOW_ITEMS = (
    "pools",
    "stats",
    "servers",
    "clients",
    "databases",
    "state",
    "lists",
    "users",
    "config",
    "mem",
    "version",
    "totals",
    "stats_totals",
    "stats_averages",
    "dns_hosts",
    "dns_zones",
    "sockets",
    "active_sockets",
)

_BARE_WORD = re.compile(r"[0-9a-z_]+")

# Error texts of the console meaning "already in the requested state".
ALREADY_DONE_ERRORS = {
    "pause": ("already suspended/paused",),
    "resume": ("is not paused/suspended", "is not paused"),
}


def quote_ident(name: str) -> str:
    """A database name as the console's WORD: bare when it can be, else double-quoted."""
    if not name or any(ord(c) < 32 for c in name):
        raise ValueError(f"invalid PgBouncer database name: {name!r}")
    if _BARE_WORD.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def build_command(command: str, database: str | None = None, show: str | None = None) -> str:
    """The console command text, e.g. ``PAUSE``, ``RESUME "app-db"``, ``SHOW POOLS``."""
    if command not in COMMANDS:
        raise ValueError(f"unsupported PgBouncer command: {command}")
    if command == "show":
        if show not in SHOW_ITEMS:
            raise ValueError(f"SHOW needs one of {', '.join(SHOW_ITEMS)}")
        return f"SHOW {show.upper()}"
    if database and command not in TAKES_DATABASE:
        raise ValueError(f"{command.upper()} takes no database name")
    text = command.upper()
    return f"{text} {quote_ident(database)}" if database else text


def parse_state(rows: t.Iterable[t.Dict[str, t.Any]]) -> t.Dict[str, bool]:
    """SHOW STATE rows (key, value yes/no) -> {'active': .., 'paused': .., 'suspended': ..}."""
    state = {str(r.get("key")): str(r.get("value")).lower() == "yes" for r in rows}
    return {k: state.get(k, False) for k in ("active", "paused", "suspended")}


def paused_databases(rows: t.Iterable[t.Dict[str, t.Any]]) -> t.Set[str]:
    """Names of databases paused with ``PAUSE db`` (SHOW DATABASES ``paused`` = 1)."""
    return {str(r["name"]) for r in rows if str(r.get("paused", 0)).strip() in ("1", "t", "true", "yes")}


def decide(
    command: str,
    database: str | None,
    state: t.Dict[str, bool] | None,
    paused_dbs: t.Set[str] | None,
) -> t.Tuple[str, str]:
    """Whether a PAUSE/RESUME is needed: ('run'|'skip'|'fail', reason).

    ``state`` is None when the console has no SHOW STATE (older PgBouncer):
    then the command runs and its 'already' error is read as no change.
    """
    if command == "pause":
        if state and state["suspended"]:
            return "fail", "PgBouncer is suspended (SUSPEND); RESUME it before pausing"
        if state and state["paused"]:
            return "skip", "PgBouncer is already paused"
        if database and paused_dbs is not None and database in paused_dbs:
            return "skip", f"database {database} is already paused"
        return "run", ""
    if command == "resume":
        if database:
            if paused_dbs is not None and database not in paused_dbs:
                return "skip", f"database {database} is not paused"
            return "run", ""
        if state and not (state["paused"] or state["suspended"]):
            return "skip", "PgBouncer is not paused"
        return "run", ""
    return "run", ""


def already_done(command: str, error: str) -> bool:
    """Whether a console error means the pooler is already in the requested state."""
    return any(text in error for text in ALREADY_DONE_ERRORS.get(command, ()))
