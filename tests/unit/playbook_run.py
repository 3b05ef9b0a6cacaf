"""Run one of the collection's playbooks against a throw-away inventory."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def run_playbook(
    tmp_path: Path, inv: t.Dict[str, t.Any], playbook: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook with this checkout's ansible.cfg; `env` adds to the environment."""
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(inv))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(path), str(playbook), *args],
        cwd=REPO,
        env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", **env),
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
