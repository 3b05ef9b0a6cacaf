"""site.yml refuses a broken inventory before anything changes.

Runs the real playbook against inventories of local hosts: the preflight play
must fail, name the offending variable or group, and no later play may start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inv))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_GATHERING="explicit")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(path), str(REPO / "playbooks/site.yml")],
        cwd=REPO,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
