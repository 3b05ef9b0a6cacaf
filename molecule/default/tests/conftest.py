"""Shared helpers for the foundation scenario's testinfra checks.

Cluster-level facts come from the controller side: Patroni's REST API and
PostgreSQL through the load balancer, reached on the scenario's own docker
network, verified with the CA the scenario created.
"""

from __future__ import annotations

import json
import os
import shlex
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")


def get_host(name: str) -> Any:
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


@pytest.fixture(scope="session")
def hostvars() -> dict[str, Any]:
    return get_host("mol-db1").ansible.get_variables()


@pytest.fixture(scope="session")
def tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.join(EPHEMERAL, "pki", "ca.crt"))


@pytest.fixture(scope="session")
def addresses() -> dict[str, str]:
    return {
        name: get_host(name).ansible.get_variables()["neurondb_address"]
        for name in ("mol-db1", "mol-db2", "mol-db3", "mol-lb1", "mol-app1", "mol-app2")
    }


@pytest.fixture
def patroni_cluster(addresses: dict[str, str], tls: ssl.SSLContext) -> Callable[[], dict[str, Any]]:
    def read() -> dict[str, Any]:
        url = f"https://{addresses['mol-db1']}:8008/cluster"
        with urllib.request.urlopen(url, context=tls, timeout=5) as response:
            return json.load(response)

    return read


@pytest.fixture
def connect(addresses: dict[str, str], hostvars: dict[str, Any]) -> Callable[..., psycopg.Connection]:
    def open_connection(host: str, port: int = 5432, dbname: str = "postgres", **kwargs: Any) -> psycopg.Connection:
        return psycopg.connect(
            host=addresses.get(host, host),
            port=port,
            dbname=dbname,
            user="postgres",
            password=hostvars["patroni_superuser_password"],
            sslmode="require",
            connect_timeout=5,
            autocommit=True,
            **kwargs,
        )

    return open_connection


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until predicate() is truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # any failure means "not yet"
            last_error = exc
        time.sleep(1)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


# -- running Ansible from the tests ---------------------------------------------------

PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..")
)


def ansible_command(name: str) -> str:
    """The Ansible command beside this Python (the venv's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else name


def ansible_env() -> dict[str, str]:
    """The environment with this checkout's collections first."""
    env = dict(os.environ)
    collections = os.path.join(PROJECT, "collections")
    paths = [p for p in env.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p and p != collections]
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([collections, *paths])
    return env


@dataclass
class PlaybookRun:
    """What ansible-playbook reported (its JSON callback), and the failures in it."""

    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    @property
    def failures(self) -> list[str]:
        """'host: task: msg' of every failed task result, rescued ones included."""
        found = []
        for play in self.report.get("plays", []):
            for task in play.get("tasks", []):
                for host, result in task.get("hosts", {}).items():
                    if result.get("failed"):
                        found.append(f"{host}: {task['task']['name']}: {result.get('msg', '')}")
        return found

    def summary(self) -> str:
        stats = self.report.get("stats")
        return f"exit {self.returncode}; failures: {self.failures}; stats: {stats}; {self.stderr[-2000:]}"


def run_playbook(playbook: str, extra_vars: dict[str, Any] | None = None, timeout: float = 900) -> PlaybookRun:
    """ansible-playbook against the Molecule inventory with this checkout's
    collections; extra_vars go in through a file (no quoting)."""
    inventory = INVENTORY or os.path.join(EPHEMERAL, "inventory")
    env = ansible_env()
    env.update(
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.json",  # and no other callback on stdout
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="molecule-vars-") as handle:
        json.dump(extra_vars or {}, handle)
        handle.flush()
        run = subprocess.run(
            [ansible_command("ansible-playbook"), "-i", inventory, playbook, "-e", f"@{handle.name}"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    start = run.stdout.find("{")
    try:
        report = json.loads(run.stdout[start:]) if start >= 0 else {}
    except ValueError:
        output = run.stdout[-3000:] + run.stderr[-3000:]
        pytest.fail(f"{playbook} printed no JSON report (exit {run.returncode}): {output}")
    return PlaybookRun(run.returncode, run.stdout, run.stderr, report)


# -- SQL as an application, through the app host's PgBouncer -----------------------

# Runs on an app host with its own Python: connects as the agent does (its
# EnvironmentFile's password, never on a command line) and prints the first
# row of the query as JSON.
APP_SQL = """
import json, sys, psycopg
env = dict(line.split("=", 1) for line in open("/etc/neurondb/neuronagent.env") if "=" in line)
dbname, query, options, params = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with psycopg.connect(host="127.0.0.1", port=6432, dbname=dbname, user="neurondb_app",
                     password=json.loads(env["DB_PASSWORD"]), options=options or None) as conn:
    print(json.dumps(list(conn.execute(query, params).fetchone()), default=str))
"""


def app_sql(host: Any, dbname: str, query: str, params: tuple[Any, ...] = (), options: str = "") -> list[Any]:
    """The first row of `query`, run on `host` through its PgBouncer as neurondb_app."""
    args = " ".join(shlex.quote(a) for a in (APP_SQL, dbname, query, options, json.dumps(list(params))))
    result = host.run(f"python3 -c {args}")
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)
