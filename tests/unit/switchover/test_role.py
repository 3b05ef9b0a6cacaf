# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The role neurondb.ha.switchover: its argument spec, and the role itself.

The spec and defaults/main.yml must list the same variables with the same
defaults, and the follower's command line the role builds must be one the
follower accepts. Then the real role runs, through ansible-playbook, against
the fake Patroni cluster of fake_patroni.py (hosts of group postgres on the
local connection, no PgBouncer or HAProxy hosts: nothing to pause or follow),
as a play and from a caller's play: the switchover itself, check mode, the
nothing-to-do case that must let the caller go on, and the refusals.
"""

from __future__ import annotations

import json
import re
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from fake_patroni import FakeCluster
from fake_services import load_follower, make_pki
from playbook_run import run_playbook

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "roles" / "switchover"
SECRET = "rest-api-secret-for-the-tests"


def load(path: Path) -> t.Any:
    return yaml.safe_load(path.read_text())


SPECS = load(ROLE / "meta" / "argument_specs.yml")["argument_specs"]
OPTIONS = SPECS["main"]["options"]
DEFAULTS = load(ROLE / "defaults" / "main.yml")
ROLE_VARS = load(ROLE / "vars" / "main.yml")


# --------------------------------------------------------------------------- the spec


def test_defaults_are_one_to_one_with_the_spec() -> None:
    assert list(DEFAULTS) == list(OPTIONS)
    for name, option in OPTIONS.items():
        if "default" in option:
            assert DEFAULTS[name] == option["default"], name
        else:
            # Worked out from other variables (or unset): the spec says so in words.
            assert DEFAULTS[name] is None or "{{" in str(DEFAULTS[name]), name
            assert any(line.startswith(("Default", "Unset")) for line in option["description"]), name


def test_every_option_is_typed_documented_and_prefixed() -> None:
    for name, option in OPTIONS.items():
        assert name.startswith("switchover_"), name
        assert option["type"] in {"str", "int", "bool", "list"}, name
        assert option["description"], name
        if option["type"] == "list":
            assert option["elements"] == "str", name
        assert option.get("no_log", False) == name.endswith("_password"), name


def test_the_preflight_entry_point_takes_the_same_variables() -> None:
    assert SPECS["preflight"]["options"] == OPTIONS


def test_worked_out_variables_do_not_shadow_options() -> None:
    # vars/main.yml outranks the inventory and play vars: an option there
    # could not be set any more.
    assert not set(ROLE_VARS) & set(OPTIONS)


def test_the_role_gives_the_follower_a_command_line_it_accepts() -> None:
    argv = ROLE_VARS["switchover_follow_argv"]
    flags = set(re.findall(r"'(--[a-z-]+)'", argv))
    actions = load_follower().build_parser()._actions  # pylint: disable=protected-access
    accepted = {s for action in actions for s in action.option_strings}
    required = {action.option_strings[0] for action in actions if action.required}
    assert flags <= accepted, flags - accepted
    assert required <= flags, required - flags
    # The role adds --check itself for step 2.
    assert "--check" in accepted


# --------------------------------------------------------------------------- the role, against a fake cluster


@pytest.fixture
def cluster() -> t.Iterator[FakeCluster]:
    fake = FakeCluster(auth=("patroni", SECRET)).start()
    yield fake
    fake.stop()


@pytest.fixture
def ca_file(tmp_path: Path) -> str:
    # Only read by the modules for https URLs; the fake cluster speaks http.
    return make_pki(str(tmp_path))[0]


def inventory(cluster: FakeCluster, ca_file: str, **extra: t.Any) -> t.Dict[str, t.Any]:
    return {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                # The play says become: true; these hosts are this machine.
                "ansible_become": False,
                "patroni_restapi_password": SECRET,
                "switchover_api_urls": cluster.urls,
                "switchover_api_ca": ca_file,
                # No PostgreSQL to CHECKPOINT on.
                "switchover_checkpoint": False,
                **extra,
            },
            "children": {
                "postgres": {
                    "hosts": {name: {"neurondb_address": f"10.99.0.{11 + i}"} for i, name in enumerate(cluster.members)}
                }
            },
        }
    }


def changes(cluster: FakeCluster) -> t.List[t.Tuple[str, str]]:
    return [(method, path) for _member, method, path, _body in cluster.requests if method != "GET"]


def test_the_playbook_switches_over_and_reports(cluster: FakeCluster, ca_file: str, tmp_path: Path) -> None:
    report = tmp_path / "reports" / "switchover.json"
    result = run_playbook(
        tmp_path,
        inventory(cluster, ca_file),
        REPO / "playbooks" / "switchover.yml",
        "-e",
        "switchover_candidate=db3",
        "-e",
        f"switchover_report_file={report}",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert cluster.leader == "db3"
    assert changes(cluster) == [("PATCH", "/config"), ("POST", "/switchover")]
    figures = json.loads(report.read_text())
    assert figures["old_leader"] == "db1" and figures["new_leader"] == "db3" and figures["leader_now"] == "db3"
    assert figures["timeline_before"] == 3 and figures["timeline"] == 4
    assert sorted(figures["replicas_streaming"]) == ["db1", "db2"]
    assert SECRET not in output


def test_check_mode_shows_the_plan_and_changes_nothing(cluster: FakeCluster, ca_file: str, tmp_path: Path) -> None:
    result = run_playbook(tmp_path, inventory(cluster, ca_file), REPO / "playbooks" / "switchover.yml", "--check")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "switching over from db1 to db2 (timeline 3)" in output
    assert cluster.leader == "db1" and changes(cluster) == []


CALLER = """
- name: A rolling restart, say
  hosts: postgres
  gather_facts: false
  any_errors_fatal: true
  tasks:
    - name: Move the primary away
      ansible.builtin.include_role:
        name: neurondb.ha.switchover
      vars:
        switchover_candidate: "{{ first_candidate }}"

    - name: Go on
      ansible.builtin.debug:
        msg: >-
          went on: due {{ switchover_plan.changed }}, leader {{ switchover_report.new_leader | default('unchanged') }}
      run_once: true

    - name: Move it again
      ansible.builtin.include_role:
        name: neurondb.ha.switchover
      vars:
        switchover_candidate: db3

    - name: Go on again
      ansible.builtin.debug:
        msg: "went on again: due {{ switchover_plan.changed }}, leader {{ switchover_report.new_leader }}"
      run_once: true
"""


def test_a_caller_goes_on_when_there_is_nothing_to_do(cluster: FakeCluster, ca_file: str, tmp_path: Path) -> None:
    playbook = tmp_path / "caller.yml"
    playbook.write_text(CALLER)
    result = run_playbook(tmp_path, inventory(cluster, ca_file), playbook, "-e", "first_candidate=db1")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "db1 already leads: nothing to do, nothing paused" in output
    assert "went on: due False, leader unchanged" in output
    # Included again in the same play: a switchover this time.
    assert "went on again: due True, leader db3" in output
    assert cluster.leader == "db3"
    assert [c for c in changes(cluster) if c[1] == "/switchover"] == [("POST", "/switchover")]


@pytest.mark.parametrize(
    ("extra", "args", "expected"),
    [
        (
            {},
            ["-e", "switchover_pause_timeout=soon", "-e", "switchover_router_force=maybe"],
            [
                "argument 'switchover_pause_timeout' is of type str and we were unable to convert to int",
                "argument 'switchover_router_force' is of type str and we were unable to convert to bool",
            ],
        ),
        ({}, ["-e", "switchover_max_lag_bytes=1MB"], ["argument 'switchover_max_lag_bytes' is of type str"]),
        (
            {"patroni_restapi_password": ""},
            ["-e", "switchover_wait_timeout=0"],
            [
                "Switchover refused, nothing was changed: switchover_wait_timeout must be a whole number of seconds "
                "above 0; patroni_restapi_password is not set"
            ],
        ),
        ({}, ["--limit", "db1"], ["in the play (no serial, no --limit) and reachable; missing: db2, db3"]),
        ({}, ["-e", "switchover_api_delegate=db9"], ["switchover_api_delegate must be localhost or an inventory host"]),
        ({}, ["-e", "switchover_candidate=db9"], ["db9"]),
    ],
    ids=["types", "lag-bytes", "range-and-secret", "limit", "delegate", "unknown-candidate"],
)
def test_refusals_change_nothing(
    cluster: FakeCluster,
    ca_file: str,
    tmp_path: Path,
    extra: t.Dict[str, t.Any],
    args: t.List[str],
    expected: t.List[str],
) -> None:
    result = run_playbook(tmp_path, inventory(cluster, ca_file, **extra), REPO / "playbooks" / "switchover.yml", *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for text in expected:
        assert text in output, output
    assert cluster.leader == "db1" and changes(cluster) == []
    assert SECRET not in output
