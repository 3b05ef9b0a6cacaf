#!/usr/bin/env python3
"""Write probe for failover drills and switchovers.

Inserts numbered rows at a fixed rate through the client path (PgBouncer and
the router on an app host, or an edge port) and records, for every attempt,
when it was sent, whether it was acknowledged (COMMIT returned) and the error
if not. Runs until --duration elapses or the stop file appears, then writes a
JSON summary. Acknowledged ids are the ground truth for the RPO check: any of
them missing from the table afterwards is a lost write.

Only python3 and python3-psycopg (Debian) are needed. Timeouts are set so a
sub-second gap is visible: psycopg raises connect_timeout below 2 s to 2 s,
so statement and TCP user timeouts bound each attempt instead.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

# Qualified: an application role may carry a search_path of its own (the
# agent's schema first), and the drills read the table back as postgres.
TABLE = "public.neurondb_drill_probe"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6432)
    parser.add_argument("--dbname", default="neurondb")
    parser.add_argument("--user", default="neurondb_app")
    parser.add_argument(
        "--password-env-file",
        default="/etc/neurondb/neuronagent.env",
        help="file with DB_PASSWORD=... (an app tier's EnvironmentFile)",
    )
    parser.add_argument("--run-id", required=True, help="label of this run; rows are tagged with it")
    parser.add_argument("--rate", type=float, default=20.0, help="attempts per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds at most")
    parser.add_argument("--stop-file", default="", help="stop when this file exists")
    parser.add_argument("--timeout-ms", type=int, default=1500, help="bound of one attempt")
    parser.add_argument("--out", required=True, help="JSON summary path")
    parser.add_argument("--status", default="", help="a file rewritten every second with the latest state")
    return parser.parse_args()


def read_password(path: str) -> str:
    if os.environ.get("PGPASSWORD"):
        return os.environ["PGPASSWORD"]
    for line in Path(path).read_text().splitlines():
        if line.startswith("DB_PASSWORD="):
            value = line.split("=", 1)[1]
            return json.loads(value) if value.startswith('"') else value
    raise SystemExit(f"no DB_PASSWORD in {path}")


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.password = read_password(args.password_env_file)
        self.conn: psycopg.Connection | None = None
        self.attempts: list[dict[str, Any]] = []
        self.stopping = False

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.args.host,
            port=self.args.port,
            dbname=self.args.dbname,
            user=self.args.user,
            password=self.password,
            connect_timeout=2,
            autocommit=True,
            tcp_user_timeout=self.args.timeout_ms,
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=2,
            application_name="neurondb-drill-probe",
        )

    def setup(self) -> None:
        with self.connect() as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} (run text NOT NULL, id bigint NOT NULL, "
                "acked_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run, id))"
            )

    def attempt(self, probe_id: int) -> dict[str, Any]:
        sent = time.time()
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.connect()
            with self.conn.transaction():
                # Transaction-local: PgBouncer (transaction pooling) keeps no session state.
                self.conn.execute("SELECT set_config('statement_timeout', %s, true)", (str(self.args.timeout_ms),))
                self.conn.execute(f"INSERT INTO {TABLE} (run, id) VALUES (%s, %s)", (self.args.run_id, probe_id))
            return {"id": probe_id, "sent": sent, "acked": time.time(), "ok": True}
        except Exception as exc:  # any failure is a failed attempt, recorded as such
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
            return {
                "id": probe_id,
                "sent": sent,
                "failed": time.time(),
                "ok": False,
                "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}",
            }

    def run(self) -> None:
        interval = 1.0 / self.args.rate
        start = time.time()
        next_at = start
        probe_id = 0
        last_status = 0.0
        while not self.stopping and time.time() - start < self.args.duration:
            if self.args.stop_file and os.path.exists(self.args.stop_file):
                break
            probe_id += 1
            self.attempts.append(self.attempt(probe_id))
            now = time.time()
            if self.args.status and now - last_status >= 1:
                self.write_status(now)
                last_status = now
            next_at += interval
            if next_at > now:
                time.sleep(next_at - now)
            else:
                next_at = now  # fell behind (a slow attempt): do not burst to catch up

    def write_status(self, now: float) -> None:
        acked = [a for a in self.attempts if a["ok"]]
        gap, gap_end = 0.0, None
        for before, after in itertools.pairwise(acked):
            if after["acked"] - before["acked"] > gap:
                gap, gap_end = after["acked"] - before["acked"], after["acked"]
        status = {
            "time": now,
            "attempts": len(self.attempts),
            "acked": len(acked),
            "failed": len(self.attempts) - len(acked),
            "last_ok": acked[-1]["acked"] if acked else None,
            "last_failed": next((a["failed"] for a in reversed(self.attempts) if not a["ok"]), None),
            "last_attempt_ok": self.attempts[-1]["ok"] if self.attempts else None,
            # The longest stall between acknowledged writes so far, and when it
            # ended: PgBouncer can hold clients through a short outage, which
            # then shows as a stall instead of failed attempts.
            "gap": gap,
            "gap_end": gap_end,
        }
        tmp = self.args.status + ".tmp"
        Path(tmp).write_text(json.dumps(status))
        os.replace(tmp, self.args.status)

    def summary(self) -> dict[str, Any]:
        acked = [a for a in self.attempts if a["ok"]]
        failed = [a for a in self.attempts if not a["ok"]]
        return {
            "run_id": self.args.run_id,
            "target": f"{self.args.host}:{self.args.port}/{self.args.dbname}",
            "rate": self.args.rate,
            "attempts": len(self.attempts),
            "acked": len(acked),
            "failed": len(failed),
            "acked_ids": [a["id"] for a in acked],
            "acks": [[a["id"], round(a["sent"], 3), round(a["acked"], 3)] for a in acked],
            "failures": [[a["id"], round(a["sent"], 3), a["error"]] for a in failed],
        }


def main() -> int:
    args = parse_args()
    probe = Probe(args)

    def stop(_signum: int, _frame: Any) -> None:
        probe.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        probe.setup()
    except psycopg.Error as exc:
        # The drill refuses to start on this: say why in one line.
        print(f"the probe cannot reach {args.host}:{args.port}/{args.dbname}: {str(exc).strip()}", file=sys.stderr)
        return 3
    probe.run()
    if args.status:
        probe.write_status(time.time())
    tmp = args.out + ".tmp"
    Path(tmp).write_text(json.dumps(probe.summary()))
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
