"""App tiers installed from user artifacts (issue 4), on the NeuronDesktop API
(two replicas, mol-app1 and mol-app2, behind Nginx on mol-lb1).

The artifacts are built here, on the controller, from the collection's own
reference service, as a user's release would come: a tarball with a
launcher, a single executable (a Python zipapp) and a real .deb. Each one
carries a release label that its launcher hands to the service
(NEURONDB_RELEASE), which reports it in /api/v1/health and in
X-NeuronDB-Release: that is how the tests see which build answers.

Every deployment runs molecule/default/app_artifact.yml (the tier's role on
its group, as site.yml would) with the artifact in extra variables. The
module's last step re-applies the default (the inventory's settings: the
reference service here) and removes what the tests installed, so the
cluster is left as it was found. No assertion is made on durations.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipapp
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECT, PlaybookRun, get_host, run_playbook, wait_for

TIER = "neurondesktop_api"
SERVICE = "neurondesktop-api"
APP_HOSTS = ("mol-app1", "mol-app2")
PORT = 8081
HEALTH = "/api/v1/health"
HOME = f"/opt/neurondb/{SERVICE}"
PLAYBOOK = os.path.join(PROJECT, "molecule", "default", "app_artifact.yml")
REFERENCE = Path(PROJECT, "roles", "app_service", "files", "neurondb_reference.py")
DEB_PACKAGE = "neurondb-molecule-api"
# One label per run: nothing a previous run left behind can pass for it.
RUN = uuid.uuid4().hex[:8]


# -- artifacts -----------------------------------------------------------------------


@dataclass(frozen=True)
class Artifact:
    path: Path
    release: str
    exec: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def variables(self, source: str | None = None, checksum: str | None = None) -> dict[str, str]:
        """The tier's extra variables: the artifact from `source` (default: its controller path)."""
        return {
            f"{TIER}_artifact": source or str(self.path),
            f"{TIER}_artifact_checksum": checksum or f"sha256:{self.digest}",
            f"{TIER}_exec": self.exec,
        }


def build_tarball(workdir: Path, release: str) -> Artifact:
    """bin/neurondesktop-api (a launcher), lib/neurondb_reference.py and RELEASE."""
    root = workdir / f"tar-{release}"
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    shutil.copyfile(REFERENCE, root / "lib" / "neurondb_reference.py")
    (root / "RELEASE").write_text(release + "\n")
    launcher = root / "bin" / SERVICE
    launcher.write_text(
        textwrap.dedent("""\
            #!/bin/sh
            # Launcher of a packaged build: the release label travels with the files.
            here=$(dirname "$(dirname "$(readlink -f "$0")")")
            NEURONDB_RELEASE=$(cat "$here/RELEASE")
            export NEURONDB_RELEASE
            exec /usr/bin/python3 "$here/lib/neurondb_reference.py" "$@"
            """)
    )
    launcher.chmod(0o755)
    path = workdir / f"{SERVICE}-{release}.tar.gz"

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(path, "w:gz") as archive:
        for member in ("bin", "lib", "RELEASE"):
            archive.add(root / member, arcname=member, filter=as_root)
    return Artifact(path, release, f"bin/{SERVICE} --kind api")


def build_binary(workdir: Path, release: str) -> Artifact:
    """One executable file: a zipapp of the reference service that knows its release."""
    source = workdir / f"bin-{release}"
    source.mkdir()
    shutil.copyfile(REFERENCE, source / "neurondb_reference.py")
    (source / "__main__.py").write_text(
        textwrap.dedent(f"""\
            import os
            import sys

            import neurondb_reference

            os.environ["NEURONDB_RELEASE"] = {release!r}
            sys.exit(neurondb_reference.main())
            """)
    )
    path = workdir / f"{SERVICE}-{release}"
    zipapp.create_archive(source, target=path, interpreter="/usr/bin/python3")
    path.chmod(0o755)
    return Artifact(path, release, f"{SERVICE} --kind api")


def build_deb(workdir: Path, release: str) -> Artifact:
    """A real Debian package (dpkg-deb --build): /usr/bin/<package> and its library."""
    root = workdir / f"deb-{release}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "lib" / DEB_PACKAGE).mkdir(parents=True)
    shutil.copyfile(REFERENCE, root / "usr" / "lib" / DEB_PACKAGE / "neurondb_reference.py")
    (root / "usr" / "lib" / DEB_PACKAGE / "neurondb_reference.py").chmod(0o644)
    launcher = root / "usr" / "bin" / DEB_PACKAGE
    launcher.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            NEURONDB_RELEASE={release}
            export NEURONDB_RELEASE
            exec /usr/bin/python3 /usr/lib/{DEB_PACKAGE}/neurondb_reference.py "$@"
            """)
    )
    launcher.chmod(0o755)
    (root / "DEBIAN" / "control").write_text(
        textwrap.dedent(f"""\
            Package: {DEB_PACKAGE}
            Version: {release}
            Architecture: all
            Maintainer: neurondb.ha tests <tests@neurondb.invalid>
            Depends: python3, python3-psycopg
            Section: misc
            Priority: optional
            Description: NeuronDB reference API as a package (a Molecule test artifact)
             Built on the fly by molecule/default/tests/test_app_artifacts.py.
            """)
    )
    for directory in [root, *root.rglob("*")]:
        if directory.is_dir():
            directory.chmod(0o755)
    path = workdir / f"{DEB_PACKAGE}_{release}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(path)], check=True, capture_output=True)
    return Artifact(path, release, f"/usr/bin/{DEB_PACKAGE} --kind api")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


def release(label: str) -> str:
    """A release label, valid as a Debian version too."""
    return f"{label}+molecule.{RUN}"


# -- the cluster's side --------------------------------------------------------------


def deploy(variables: dict[str, Any]) -> PlaybookRun:
    return run_playbook(PLAYBOOK, {"app_artifact_tier": TIER, **variables})


@dataclass
class Answer:
    done: float  # time.monotonic() when the answer was read
    status: int | None
    instance: str | None = None
    release: str | None = None
    error: str | None = None


def ask(addresses: dict[str, str], tls: ssl.SSLContext, request_id: str | None = None) -> Answer:
    """GET /api/v1/health through Nginx over HTTPS, on a connection of its own."""
    headers = {"X-Request-ID": request_id} if request_id else {}
    req = urllib.request.Request(f"https://{addresses['mol-lb1']}{HEALTH}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=tls, timeout=15) as response:
            document = json.load(response)
            header = response.headers.get("X-NeuronDB-Release")
            if document.get("release") != header:
                return Answer(time.monotonic(), response.status, error=f"body {document} but header {header}")
            return Answer(time.monotonic(), response.status, response.headers.get("X-NeuronDB-Instance"), header)
    except urllib.error.HTTPError as exc:
        return Answer(time.monotonic(), exc.code, error=exc.read()[:200].decode(errors="replace"))
    except (OSError, ValueError) as exc:
        return Answer(time.monotonic(), None, error=repr(exc))


def served_releases(addresses: dict[str, str], tls: ssl.SSLContext) -> dict[str, set[str | None]]:
    """Which release each replica answers with through Nginx: requests until
    each replica answered a few times (or 60 requests); failures are kept."""
    seen: dict[str, set[str | None]] = {}
    counts: dict[str, int] = {}
    for _ in range(60):
        answer = ask(addresses, tls)
        key = answer.instance if answer.status == 200 and answer.instance else f"failed: {answer.error}"
        seen.setdefault(key, set()).add(answer.release)
        counts[key] = counts.get(key, 0) + 1
        if all(counts.get(name, 0) >= 3 for name in APP_HOSTS):
            break
    return seen


def state(name: str) -> dict[str, str]:
    """The service as systemd runs it, its configuration, and what is staged."""
    script = f"""
        systemctl show {SERVICE} --timestamp=us+utc -p MainPID -p ActiveState -p ActiveEnterTimestamp \
            -p ActiveExitTimestamp -p NRestarts
        echo "env=$(sha256sum < /etc/neurondb/{SERVICE}.env | cut -d' ' -f1)"
        echo "unit=$(sha256sum < /etc/systemd/system/{SERVICE}.service | cut -d' ' -f1)"
        echo "current=$(readlink {HOME}/current)"
        echo "staged=$(ls -1 {HOME}/artifacts {HOME}/releases 2>/dev/null | tr '\\n' ' ')"
        echo "deb=$(dpkg-query -W -f='${{Version}}' {DEB_PACKAGE} 2>/dev/null)"
        echo "health=$(curl -s --max-time 5 http://127.0.0.1:{PORT}{HEALTH})"
    """
    out = get_host(name).check_output(script)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def differences(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """What changed, per host and item: (before, after)."""
    found = {}
    for name in before:
        changed = {key: (before[name].get(key), after[name].get(key)) for key in before[name] | after[name]}
        changed = {key: pair for key, pair in changed.items() if pair[0] != pair[1]}
        if changed:
            found[name] = changed
    return found


def local_release(found: dict[str, str]) -> str | None:
    """The release the instance itself reports on 127.0.0.1 (bypassing Nginx)."""
    try:
        return json.loads(found["health"]).get("release")
    except ValueError:
        return f"(no answer: {found['health']!r})"


def timestamp(value: str) -> datetime:
    """systemctl's --timestamp=us+utc format: 'Wed 2026-11-25 23:12:43.123456 UTC'."""
    return datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=UTC)


def assert_deployed(run: PlaybookRun, artifact: Artifact, addresses: dict[str, str], tls: ssl.SSLContext) -> None:
    assert run.returncode == 0, run.summary()
    # Both replicas answer through Nginx, with the new build and nothing else.
    assert served_releases(addresses, tls) == {name: {artifact.release} for name in APP_HOSTS}
    for name in APP_HOSTS:
        found = state(name)
        assert found["ActiveState"] == "active", (name, found)
        assert local_release(found) == artifact.release, (name, found)
        if artifact.path.suffix != ".deb":
            assert found["current"] == f"{HOME}/releases/{artifact.digest}", (name, found)


@pytest.fixture(scope="module", autouse=True)
def leave_as_found(addresses: dict[str, str], tls: ssl.SSLContext) -> Iterator[None]:
    """Afterwards the inventory's own settings again (the reference service),
    without what the tests installed."""
    before = {name: state(name) for name in APP_HOSTS}
    yield
    run = deploy({})
    assert run.returncode == 0, f"re-applying the default failed: {run.summary()}"
    for name in APP_HOSTS:
        cleanup = []
        if not before[name]["deb"]:
            cleanup.append(f"dpkg --purge {DEB_PACKAGE} >/dev/null 2>&1 || true")
        if not before[name]["staged"].strip() and not before[name]["current"]:
            cleanup.append(f"rm -rf {HOME}")
        if cleanup:
            get_host(name).check_output("; ".join(cleanup))
        found = state(name)
        assert found["ActiveState"] == "active", (name, found)
        assert local_release(found) == local_release(before[name]), (name, found)
    expected = {name: {local_release(before[name])} for name in APP_HOSTS}
    assert served_releases(addresses, tls) == expected


# -- deployments ---------------------------------------------------------------------


def test_deploys_a_tarball_from_the_controller(workdir, addresses, tls) -> None:
    artifact = build_tarball(workdir, release("2.1.0"))
    assert_deployed(deploy(artifact.variables()), artifact, addresses, tls)

    # The same again changes nothing and restarts nothing.
    before = {name: state(name) for name in APP_HOSTS}
    again = deploy(artifact.variables())
    assert again.returncode == 0, again.summary()
    assert {name: again.report["stats"][name]["changed"] for name in APP_HOSTS} == dict.fromkeys(APP_HOSTS, 0)
    assert differences(before, {name: state(name) for name in APP_HOSTS}) == {}


def controller_address(toward: str) -> str:
    """This machine's address on the route to `toward` (the project's docker
    network's gateway in the lab): no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((toward, 9))
        return probe.getsockname()[0]


@pytest.fixture
def http_server(workdir: Path, addresses: dict[str, str]) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A throw-away HTTP server for the artifacts, on the controller's address on
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


def test_deploys_a_binary_from_a_url(workdir, http_server, addresses, tls) -> None:
    base_url, served = http_server
    artifact = build_binary(workdir, release("2.2.0"))
    url = f"{base_url}/{artifact.path.name}"
    assert_deployed(deploy(artifact.variables(source=url)), artifact, addresses, tls)
    # Each app host downloaded it itself.
    fetched = {client for client, path in served if urllib.parse.unquote(path) == f"/{artifact.path.name}"}
    assert fetched == {addresses[name] for name in APP_HOSTS}, served


def test_deploys_a_deb(workdir, addresses, tls) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed on the controller: no .deb can be built")
    artifact = build_deb(workdir, release("2.3.0"))
    assert_deployed(deploy(artifact.variables()), artifact, addresses, tls)
    for name in APP_HOSTS:
        assert state(name)["deb"] == artifact.release, name


# -- rolling update ------------------------------------------------------------------

ACCESS_LOG = "/var/log/nginx/neurondb-access.log"


def test_rolling_update_under_load_fails_no_request(workdir, addresses, tls) -> None:
    """Two clients send GETs through Nginx without pause while the tier moves to
    a new build. Nginx's proxy_next_upstream (error timeout http_502 http_503
    http_504; 3 tries within 10 s) retries an idempotent request such as these
    GETs on the other replica when one refuses or fails; a POST is retried only
    when it was never sent. So zero failed GETs alone would not show the drain:
    what does is that only the other replica answers while one is out, that
    Nginx never had to retry (its access log), and that systemd restarted the
    second replica only after the first was running again."""
    artifact = build_tarball(workdir, release("2.4.0"))
    before = {name: state(name) for name in APP_HOSTS}
    answers: list[Answer] = []
    stop = threading.Event()
    prefix = f"molecule-roll-{RUN}"
    counter = iter(range(10**9))

    def client() -> None:
        while not stop.is_set():
            answers.append(ask(addresses, tls, f"{prefix}-{next(counter)}"))

    def seen(new: bool, since: float = 0.0) -> bool:
        return all(
            any(a.instance == name and (a.release == artifact.release) == new and a.done > since for a in answers)
            for name in APP_HOSTS
        )

    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: seen(new=False), 60, "both replicas answering with the old build")
        run = deploy(artifact.variables())
        finished = time.monotonic()
        if run.returncode == 0:
            wait_for(lambda: seen(new=True, since=finished), 60, "both replicas answering with the new build")
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    assert run.returncode == 0, run.summary()

    failed = [a for a in answers if a.status != 200 or a.error]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed during the update: {failed[:5]}"

    # Per replica: old answers, then new ones, never back (by time of answer:
    # the old process has stopped before the new one starts).
    ordered = sorted(answers, key=lambda a: a.done)
    old = {
        name: [i for i, a in enumerate(ordered) if a.instance == name and a.release != artifact.release]
        for name in APP_HOSTS
    }
    new = {
        name: [i for i, a in enumerate(ordered) if a.instance == name and a.release == artifact.release]
        for name in APP_HOSTS
    }
    for name in APP_HOSTS:
        assert old[name] and new[name], f"{name}: {len(old[name])} old and {len(new[name])} new answers"
        assert max(old[name]) < min(new[name]), f"{name} answered with the old build after the new one"
    first, second = sorted(APP_HOSTS, key=lambda name: min(new[name]))
    # While the first was out, the second answered, still with the old build.
    gap = ordered[max(old[first]) + 1 : min(new[first])]
    assert gap, f"no request was answered while {first} was out"
    assert all(a.instance == second and a.release != artifact.release for a in gap), gap[:5]
    # While the second was out, the first answered, already with the new build.
    gap = ordered[max(old[second]) + 1 : min(new[second])]
    assert gap, f"no request was answered while {second} was out"
    assert all(a.instance == first and a.release == artifact.release for a in gap), gap[:5]

    # systemd's view: each restarted once, the second only after the first ran again.
    after = {name: state(name) for name in APP_HOSTS}
    for name in APP_HOSTS:
        assert after[name]["MainPID"] != before[name]["MainPID"], name
        assert local_release(after[name]) == artifact.release, name
    assert timestamp(after[first]["ActiveEnterTimestamp"]) < timestamp(after[second]["ActiveExitTimestamp"]), after

    # Nginx logged every request once, each answered by one replica at the
    # first try: drained replicas got no request to retry.
    log = get_host("mol-lb1").check_output(f"grep -F 'id={prefix}-' {ACCESS_LOG} || true")
    entries = [re.search(r"upstream=(.*) urt=.* us=(.*) id=(\S+)$", line) for line in log.splitlines()]
    assert all(entries), log[:2000]
    assert len(entries) == len(answers), f"{len(entries)} log lines for {len(answers)} requests"
    retried = [entry.group(0) for entry in entries if "," in entry.group(1) or entry.group(2) != "200"]
    assert not retried, f"Nginx had to retry {len(retried)} requests: {retried[:5]}"


# -- refusals ------------------------------------------------------------------------

UNREACHABLE = "http://127.0.0.1:9/none.tar.gz"


def refusal(case: str, artifact: Artifact) -> tuple[dict[str, Any], list[str], list[str]]:
    """Extra variables of a bad input built around a good artifact (one that
    would change the running version if it were let through), the phrases
    the error must contain, and the ones it must not."""
    if case == "checksum mismatch":
        wrong = hashlib.sha256(f"not {artifact.path.name}".encode()).hexdigest()
        variables = artifact.variables(checksum=f"sha256:{wrong}")
        return variables, [str(artifact.path), f"has sha256 {artifact.digest}", f"expected {wrong}"], []
    if case == "unreachable URL":
        return artifact.variables(source=UNREACHABLE), [f"cannot stage {UNREACHABLE}"], []
    if case == "missing JWT secret":
        variables = {**artifact.variables(), f"{TIER}_jwt_secret": ""}
        return variables, [f"{TIER}_jwt_secret is missing"], [f"{TIER}_db_password"]
    if case == "missing database password":
        variables = {**artifact.variables(), "neurondesk_app_db_password": ""}
        return variables, [f"{TIER}_db_password", "is missing"], [f"{TIER}_jwt_secret"]
    raise AssertionError(case)


REFUSALS = ["checksum mismatch", "unreachable URL", "missing JWT secret", "missing database password"]


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_before_the_running_version_is_touched(case, workdir, addresses, tls, hostvars) -> None:
    artifact = build_tarball(workdir, release(f"2.9.{REFUSALS.index(case)}"))
    variables, phrases, absent = refusal(case, artifact)
    before = {name: state(name) for name in APP_HOSTS}
    serving = served_releases(addresses, tls)
    assert set(serving) == set(APP_HOSTS), f"not serving normally before the test: {serving}"

    run = deploy(variables)

    assert run.returncode != 0, f"{case} was accepted: {run.summary()}"
    failures = "\n".join(run.failures)
    for phrase in phrases:
        assert phrase in failures, f"{case}: {phrase!r} not in the error:\n{failures}"
    for phrase in absent:
        assert phrase not in failures, f"{case}: {phrase!r} named though not the problem:\n{failures}"
    # Nothing secret in what Ansible printed.
    for secret in ("neurondesk_app_db_password", "neurondesktop_api_jwt_secret"):
        assert hostvars[secret] not in run.stdout + run.stderr, f"{secret}'s value was printed"

    # The same processes, configuration and staged files on both replicas,
    # which still answer with the build they had.
    assert differences(before, {name: state(name) for name in APP_HOSTS}) == {}
    assert served_releases(addresses, tls) == serving
