"""site.yml refuses a broken inventory before anything changes.

Runs the real playbook against inventories of local hosts: the preflight play
must fail, name the offending variable or group, and no later play may start.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playbook_run import run_playbook

REPO = Path(__file__).resolve().parents[3]
SECRETS = {
    "patroni_superuser_password": "s" * 16,
    "patroni_replication_password": "r" * 16,
    "patroni_rewind_password": "w" * 16,
    "patroni_restapi_password": "a" * 16,
}


def inventory(
    etcd: int = 3, postgres: int = 3, secrets: dict[str, str] | None = None, duplicate: bool = False
) -> dict[str, Any]:
    hosts: dict[str, dict[str, Any]] = {}
    for i in range(max(etcd, postgres)):
        hosts[f"node{i}"] = {"neurondb_address": f"10.99.0.{10 + i}"}
    if duplicate:
        hosts["node1"]["neurondb_address"] = hosts["node0"]["neurondb_address"]
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                **(SECRETS if secrets is None else secrets),
            },
            "children": {
                "etcd": {"hosts": {f"node{i}": hosts[f"node{i}"] for i in range(etcd)}},
                "postgres": {"hosts": {f"node{i}": hosts[f"node{i}"] for i in range(postgres)}},
            },
        }
    }


def run_site(tmp_path: Path, inv: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return run_playbook(tmp_path, inv, REPO / "playbooks/site.yml", ANSIBLE_GATHERING="explicit")


@pytest.mark.parametrize(
    ("inv", "expected"),
    [
        (inventory(etcd=2), "group 'etcd' has 2 member(s)"),
        (inventory(etcd=4, postgres=3), "group 'etcd' has 4 member(s)"),
        (inventory(postgres=0), "group 'postgres' has 0 host(s)"),
        (inventory(duplicate=True), "neurondb_address is shared by several hosts: 10.99.0.10"),
        (
            inventory(secrets={k: v for k, v in SECRETS.items() if k != "patroni_replication_password"}),
            "patroni_replication_password is missing",
        ),
        (
            inventory(secrets={**SECRETS, "patroni_superuser_password": "short"}),
            "patroni_superuser_password is missing or shorter than 12",
        ),
    ],
    ids=["even-etcd-2", "even-etcd-4", "no-postgres", "duplicate-address", "missing-secret", "short-secret"],
)
def test_site_refuses_bad_inventory(tmp_path: Path, inv: dict[str, Any], expected: str) -> None:
    result = run_site(tmp_path, inv)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    # Nothing after the checks ran.
    assert "Prepare every host" not in output, output
    # No secret value leaks into the output.
    for value in SECRETS.values():
        assert value not in output


# -- the roles' own cross-field checks, run by the preflight -----------------------

APP_SECRETS = {
    "neurondb_app_db_password": "n" * 16,
    "neurondesk_app_db_password": "d" * 16,
    "neurondesktop_api_admin_password": "m" * 16,
    "neurondesktop_api_jwt_secret": "j" * 40,
    "neuronmcp_auth_token": "t" * 30,
}


def with_apps(extra_vars: dict[str, Any]) -> dict[str, Any]:
    """The good inventory plus one app host running every tier, and `extra_vars`."""
    inv = inventory()
    inv["all"]["vars"].update(APP_SECRETS, **extra_vars)
    app = {"app0": {"neurondb_address": "10.99.1.10"}}
    for group in ("neuronagent", "neurondesktop_api", "neurondesktop_frontend", "neuronmcp"):
        inv["all"]["children"][group] = {"hosts": app}
    return inv


DEB = {"name": "pg_cron", "deb": "/srv/postgresql-17-cron.deb", "preload": "pg_cron", "databases": ["postgres"]}


@pytest.mark.parametrize(
    ("extra_vars", "expected"),
    [
        (
            {"postgresql_extensions": [{"name": "vector", "databases": ["neurondb"]}, {"name": "neurondb"}]},
            "pgvector (vector) and neurondb cannot share database neurondb",
        ),
        ({"postgresql_extensions": [DEB]}, "pg_cron: deb /srv/postgresql-17-cron.deb needs its checksum"),
        ({"neurondesktop_api_jwt_secret": ""}, "AUTH_MODE jwt needs neurondesktop_api_jwt_secret"),
        (
            {"neurondesktop_api_auth_mode": "oidc", "neurondesktop_api_oidc_client_id": "c"},
            "AUTH_MODE oidc needs neurondesktop_api_oidc_issuer_url",
        ),
        ({"neurondesktop_api_admin_password": ""}, "neurondesktop_api_admin_password is missing"),
        ({"neuronmcp_http_addr": "0.0.0.0:8080"}, "not on the agent's port 8080"),
        (
            {"neuronagent_events_enabled": True},
            "neuronagent_events_enabled or neuronagent_distributed_enabled need a session-mode pool",
        ),
    ],
    ids=[
        "pgvector-and-neurondb",
        "deb-without-checksum",
        "jwt-no-secret",
        "oidc-no-issuer",
        "no-admin-password",
        "mcp-on-agent-port",
        "events-in-transaction-pool",
    ],
)
def test_site_refuses_bad_app_settings(tmp_path: Path, extra_vars: dict[str, Any], expected: str) -> None:
    result = run_site(tmp_path, with_apps(extra_vars))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output
    assert "Prepare every host" not in output, output
    for value in [*SECRETS.values(), *APP_SECRETS.values()]:
        assert value not in output
