"""App tiers installed from the packages a user supplies, the way the real
NeuronDB releases come: the Desktop API as a .deb (two replicas, mol-app1 and
mol-app2, behind Nginx on mol-lb1), the frontend as a tarball of the built app.

The packages are the collection's reference build (reference/build.py) at a
version of this run's own, so the install path under test is the real one.
Which replica answered a request is read where it holds for any service:
Nginx's access log (the upstream of each request id). Which version runs is
read from dpkg and from the release directory. Every deployment runs
molecule/default/app_artifact.yml (the tier's role on its group, as site.yml
would) with the package in extra variables; the module ends by re-applying
the inventory's settings. No assertion is made on durations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, PlaybookRun, get_host, run_playbook, wait_for

APP_HOSTS = ("mol-app1", "mol-app2")
PLAYBOOK = os.path.join(PROJECT, "molecule", "default", "app_artifact.yml")
ACCESS_LOG = "/var/log/nginx/neurondb-access.log"
API = "neurondesktop-api"
API_HOME = f"/opt/neurondb/{API}"
FRONTEND_HOME = "/opt/neurondb/neurondesktop-frontend"
# One version per run: nothing a previous run left behind can pass for it.
RUN = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Package:
    path: Path
    sha256: str
    version: str


def build(workdir: Path, version: str) -> dict[str, Package]:
    """The reference packages at `version`, as a release would publish them."""
    out = workdir / version
    result = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "reference", "build.py"), "--out", str(out), "--version", version],
        check=True,
        capture_output=True,
        text=True,
    )
    return {
        name: Package(Path(entry["path"]), entry["sha256"], version)
        for name, entry in json.loads(result.stdout).items()
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="module")
def release(workdir: Path) -> dict[str, Package]:
    return build(workdir, f"1.0.1+molecule.{RUN}")


def api_variables(package: Package, source: str | None = None, checksum: str | None = None) -> dict[str, str]:
    return {
        "app_artifact_tier": "neurondesktop_api",
        "neurondesktop_api_artifact": source or str(package.path),
        "neurondesktop_api_artifact_checksum": checksum or f"sha256:{package.sha256}",
    }


def deploy(variables: dict[str, Any]) -> PlaybookRun:
    return run_playbook(PLAYBOOK, variables)


def state(name: str) -> dict[str, str]:
    """The API as systemd runs it, its configuration, and what is installed."""
    script = f"""
        systemctl show {API} --timestamp=us+utc -p MainPID -p ActiveState -p ActiveEnterTimestamp \
            -p ActiveExitTimestamp -p NRestarts
        echo "env=$(sha256sum < /etc/neurondb/{API}.env | cut -d' ' -f1)"
        echo "unit=$(sha256sum < /etc/systemd/system/{API}.service | cut -d' ' -f1)"
        echo "staged=$(ls -1 {API_HOME}/artifacts 2>/dev/null | tr '\\n' ' ')"
        echo "deb=$(dpkg-query -W -f='${{Version}}' neurondesktop 2>/dev/null)"
        echo "health=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://127.0.0.1:8081/health)"
    """
    out = get_host(name).check_output(script)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def differences(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in before:
        changed = {key: (before[name].get(key), after[name].get(key)) for key in before[name] | after[name]}
        changed = {key: pair for key, pair in changed.items() if pair[0] != pair[1]}
        if changed:
            found[name] = changed
    return found


def timestamp(value: str) -> datetime:
    """systemctl's --timestamp=us+utc format: 'Wed 2026-11-25 23:12:43.123456 UTC'."""
    return datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC)


@pytest.fixture(scope="module", autouse=True)
def leave_as_found() -> Iterator[None]:
    """Afterwards the inventory's own settings again (the reference packages
    at the collection's version)."""
    before = {name: state(name) for name in APP_HOSTS}
    yield
    for tier in ("neurondesktop_api", "neurondesktop_frontend"):
        run = deploy({"app_artifact_tier": tier})
        assert run.returncode == 0, f"re-applying the default of {tier} failed: {run.summary()}"
    for name in APP_HOSTS:
        found = state(name)
        assert found["ActiveState"] == "active" and found["health"] == "200", (name, found)
        assert found["deb"] == before[name]["deb"], (name, found)


# -- a request client that names each request --------------------------------------


@dataclass
class Answer:
    request_id: str
    sent: float  # time.time() before sending
    done: float  # time.time() when answered
    status: int | None
    error: str | None = None


def ask(addresses: dict[str, str], tls: ssl.SSLContext, request_id: str) -> Answer:
    """GET /api/v1/health through Nginx over HTTPS, on a connection of its own."""
    sent = time.time()
    req = urllib.request.Request(f"https://{addresses['mol-lb1']}/api/v1/health", headers={"X-Request-ID": request_id})
    try:
        with urllib.request.urlopen(req, context=tls, timeout=15) as response:
            response.read()
            return Answer(request_id, sent, time.time(), response.status)
    except urllib.error.HTTPError as exc:
        return Answer(request_id, sent, time.time(), exc.code, exc.read()[:200].decode(errors="replace"))
    except OSError as exc:
        return Answer(request_id, sent, time.time(), None, repr(exc))


def upstreams(prefix: str) -> dict[str, tuple[str, str]]:
    """request id -> (upstream address(es), upstream status(es)) from Nginx's log."""
    log = get_host("mol-lb1").check_output(f"grep -F 'id={prefix}-' {ACCESS_LOG} || true")
    found = {}
    for line in log.splitlines():
        match = re.search(r"upstream=(.*) urt=.* us=(.*) id=(\S+)$", line)
        assert match, line
        found[match.group(3)] = (match.group(1), match.group(2))
    return found


# -- deployments ---------------------------------------------------------------------


def controller_address(toward: str) -> str:
    """This machine's address on the route to `toward` (the project's docker
    network's gateway): no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((toward, 9))
        return probe.getsockname()[0]


@pytest.fixture
def http_server(workdir: Path, addresses: dict[str, str]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A throw-away HTTP server for the packages, on the controller's address on
    the project's network only; yields its base URL and the (client, path) it served."""
    served: list[tuple[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            served.append((self.client_address[0], self.path))

    server = ThreadingHTTPServer((controller_address(addresses["mol-app1"]), 0), partial(Handler, directory=workdir))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_frontend_tarball_from_the_controller_then_nothing_to_do(release, addresses, tls) -> None:
    package = release["neurondesktop-frontend"]
    variables = {
        "app_artifact_tier": "neurondesktop_frontend",
        "neurondesktop_frontend_artifact": str(package.path),
        "neurondesktop_frontend_artifact_checksum": f"sha256:{package.sha256}",
    }
    run = deploy(variables)
    assert run.returncode == 0, run.summary()
    for name in APP_HOSTS:
        current = get_host(name).check_output(f"readlink {FRONTEND_HOME}/current")
        assert current == f"{FRONTEND_HOME}/releases/{package.sha256}", name
        assert get_host(name).run("curl -sf -o /dev/null http://127.0.0.1:3000/").rc == 0, name
    again = deploy(variables)
    assert again.returncode == 0, again.summary()
    assert {name: again.report["stats"][name]["changed"] for name in APP_HOSTS} == dict.fromkeys(APP_HOSTS, 0)


def test_rolling_deb_update_from_a_url_fails_no_request(release, http_server, addresses, tls) -> None:
    """Two clients send GETs through Nginx without pause while the API moves
    to a new .deb, downloaded by each host from a URL. Nginx retries an
    idempotent GET on the other replica when one fails, so zero failed GETs
    alone would not show the drain: what does is that Nginx never had to
    retry (its log), that no request reached a replica while it was out, and
    that systemd restarted the second replica only after the first ran again."""
    base_url, served = http_server
    package = release["neurondesktop"]
    url = f"{base_url}/{package.path.relative_to(package.path.parents[1])}"
    before = {name: state(name) for name in APP_HOSTS}
    answers: list[Answer] = []
    stop = threading.Event()
    prefix = f"molecule-roll-{RUN}"
    counter = iter(range(10**9))

    def client() -> None:
        while not stop.is_set():
            answers.append(ask(addresses, tls, f"{prefix}-{next(counter)}"))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: len(answers) > 20, 60, "requests answered before the update")
        run = deploy(api_variables(package, source=url))
        time.sleep(3)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert run.returncode == 0, run.summary()

    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the update: {failed[:5]}"
    fetched = {client for client, path in served if path.endswith(package.path.name)}
    assert fetched == {addresses[name] for name in APP_HOSTS}, served

    after = {name: state(name) for name in APP_HOSTS}
    for name in APP_HOSTS:
        assert after[name]["deb"] == package.version, (name, after[name])
        assert after[name]["MainPID"] != before[name]["MainPID"], name
    first, second = sorted(APP_HOSTS, key=lambda name: timestamp(after[name]["ActiveEnterTimestamp"]))
    assert timestamp(after[first]["ActiveEnterTimestamp"]) < timestamp(after[second]["ActiveExitTimestamp"]), after

    # Every request logged once, answered by one replica at the first try, and
    # none by a replica between its stop and its new start.
    logged = upstreams(prefix)
    assert len(logged) == len(answers), f"{len(logged)} log lines for {len(answers)} requests"
    retried = {rid: up for rid, up in logged.items() if "," in up[0] or up[1] != "200"}
    assert not retried, f"Nginx had to retry {len(retried)} requests: {list(retried.items())[:5]}"
    for name in APP_HOSTS:
        out_from = timestamp(after[name]["ActiveExitTimestamp"]).timestamp()
        back_at = timestamp(after[name]["ActiveEnterTimestamp"]).timestamp()
        reached = [
            a.request_id
            for a in answers
            if a.sent > out_from and a.done < back_at and logged[a.request_id][0].startswith(addresses[name] + ":")
        ]
        assert not reached, f"{name} got {len(reached)} requests while it was out: {reached[:5]}"


# -- refusals ------------------------------------------------------------------------

UNREACHABLE = "http://127.0.0.1:9/none.deb"


def refusal(case: str, package: Package) -> tuple[dict[str, Any], list[str]]:
    """Extra variables of a bad input around a good package (one that would
    change the running version if let through), and what the error must say."""
    if case == "checksum mismatch":
        wrong = hashlib.sha256(f"not {package.path.name}".encode()).hexdigest()
        return api_variables(package, checksum=f"sha256:{wrong}"), [f"has sha256 {package.sha256}", f"expected {wrong}"]
    if case == "unreachable URL":
        return api_variables(package, source=UNREACHABLE), [f"cannot stage {UNREACHABLE}"]
    if case == "schema file not in the package":
        missing = "/usr/share/neurondesktop/missing.sql"
        return {**api_variables(package), "neurondesktop_api_schema_file": missing}, [missing]
    if case == "first-start setting changed":
        # The API read it once into its stored profile; a new value would not apply.
        return {**api_variables(package), "neurondesktop_api_agent_endpoint": "http://127.0.0.1:18080"}, [
            "NEURONAGENT_ENDPOINT changed since the API stored its profile"
        ]
    raise AssertionError(case)


# The settings' own refusals (admin password, AUTH_MODE, MCP address, ...) come
# from the roles' check files, which tests/unit/playbooks/test_preflight.py
# runs through site.yml; here, what needs the hosts.
REFUSALS = [
    "checksum mismatch",
    "unreachable URL",
    "schema file not in the package",
    "first-start setting changed",
]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_before_the_running_version_is_touched(case, workdir, addresses, tls, hostvars) -> None:
    package = build(workdir, f"1.0.2+molecule.{RUN}")["neurondesktop"]
    variables, phrases = refusal(case, package)
    before = {name: state(name) for name in APP_HOSTS}
    assert all(found["health"] == "200" for found in before.values()), before

    run = deploy(variables)

    assert run.returncode != 0, f"{case} was accepted: {run.summary()}"
    failures = "\n".join(run.failures)
    for phrase in phrases:
        assert phrase in failures, f"{case}: {phrase!r} not in the error:\n{failures}"
    for secret in ("neurondesk_app_db_password", "neurondesktop_api_jwt_secret", "neurondesktop_api_admin_password"):
        assert hostvars[secret] not in run.stdout + run.stderr, f"{secret}'s value was printed"
    after = {name: state(name) for name in APP_HOSTS}
    # A refused package may stay staged (verified, in the artifacts directory);
    # nothing that runs may change.
    for name in APP_HOSTS:
        before[name].pop("staged"), after[name].pop("staged")
    assert differences(before, after) == {}
