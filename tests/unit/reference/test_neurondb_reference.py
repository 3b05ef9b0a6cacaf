# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The reference services (roles/app_service/files/neurondb_reference.py), over real HTTP.

Each service runs as its own process on 127.0.0.1, as systemd would run it. The
database behaviour runs against a throw-away PostgreSQL cluster made with initdb
in a temporary directory (as the ``postgres`` user when the tests run as root);
those tests are skipped only when no initdb binary exists on the machine.

NEURONDB_REFERENCE_PYTHON picks the services' interpreter (default: this one), e.g.
a Python 3.13 with psycopg 3.2 as Debian 13 ships them.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing as t
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "roles" / "app_service" / "files" / "neurondb_reference.py"
# The services run on this interpreter: the venv's by default, or e.g. Debian's
# python3 with python3-psycopg to check the deployed combination.
PYTHON = os.environ.get("NEURONDB_REFERENCE_PYTHON") or sys.executable
APP_USER = "neurondb"
APP_PASSWORD = "app pass 'quoted'"
SUPERUSER_PASSWORD = "super-secret-test"
REPLICA_DB = "neurondb_replica"
REPLICA_ROW_ID = 424242


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refusing_socket() -> socket.socket:
    """A bound port nobody listens on: connections are refused and no one else gets it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def silent_socket() -> socket.socket:
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> t.Any:
        return json.loads(self.body)


def parse_metrics(text: str) -> t.List[t.Tuple[str, t.Dict[str, str], float]]:
    """Samples of the Prometheus text format: (name, labels, value)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric(samples: t.List[t.Tuple[str, t.Dict[str, str], float]], name: str, **labels: str) -> float:
    """Sum of the samples of name whose labels include the given ones (0 when none)."""
    return sum(value for n, have, value in samples if n == name and labels.items() <= have.items())


@dataclass
class Service:
    """A reference service process and a small HTTP client for it."""

    kind: str
    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    err_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: t.Optional[bytes] = None,
        headers: t.Optional[t.Dict[str, str]] = None,
        timeout: float = 15,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            return Reply(answer.status, answer.headers, answer.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: t.Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post_json(self, path: str, document: t.Any, **kwargs: t.Any) -> Reply:
        body = json.dumps(document).encode()
        return self.request("POST", path, body=body, headers={"Content-Type": "application/json"}, **kwargs)

    def metrics(self) -> t.List[t.Tuple[str, t.Dict[str, str], float]]:
        reply = self.get("/metrics")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(reply.body.decode())

    def log_text(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 20) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.proc.returncode}: {self.err_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.kind} did not listen on {self.port} within {timeout} s")

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@dataclass
class Launcher:
    """Starts service processes with a clean environment and stops them afterwards."""

    workdir: Path
    services: t.List[Service] = field(default_factory=list)

    def spawn(self, kind: str, name: str, env: t.Dict[str, t.Optional[str]], port: t.Optional[int] = None) -> Service:
        """Start one service (not waiting for it); a None value in env removes that variable."""
        port = port or free_port()
        full = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "INSTANCE_NAME": name,
            "SERVER_HOST": "127.0.0.1",
            "SERVER_PORT": str(port),
        }
        full.update(env)
        clean = {key: value for key, value in full.items() if value is not None}
        stem = f"{kind}-{len(self.services)}-{uuid.uuid4().hex[:6]}"
        log_path, err_path = self.workdir / f"{stem}.out", self.workdir / f"{stem}.err"
        with log_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                [PYTHON, str(SCRIPT), "--kind", kind],
                env=clean,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        service = Service(kind, name, port, proc, log_path, err_path)
        self.services.append(service)
        return service

    def close(self) -> None:
        for service in self.services:
            if service.proc.poll() is None:
                service.proc.kill()
                service.proc.wait()


def run_script(kind: str, env: t.Dict[str, str], stdin: str = "", timeout: float = 15) -> subprocess.CompletedProcess:
    """Run the script to completion (configuration errors, MCP on stdio)."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "SERVER_HOST": "127.0.0.1"}
    full.update(env)
    return subprocess.run(
        [PYTHON, str(SCRIPT), "--kind", kind],
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bindir() -> t.Optional[Path]:
    """The newest /usr/lib/postgresql/N/bin with initdb, else initdb on PATH."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda path: int(Path(path).parts[4]) if Path(path).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@dataclass
class Postgres:
    port: int
    host: str = "127.0.0.1"
    dbname: str = "neurondb"

    def env(self) -> t.Dict[str, t.Optional[str]]:
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(self.port),
            "DB_NAME": self.dbname,
            "DB_USER": APP_USER,
            "DB_PASSWORD": APP_PASSWORD,
            "DB_SSLMODE": "disable",
        }

    def connect(self, superuser: bool = False, dbname: t.Optional[str] = None) -> t.Any:
        import psycopg  # pylint: disable=import-outside-toplevel

        user, password = ("postgres", SUPERUSER_PASSWORD) if superuser else (APP_USER, APP_PASSWORD)
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=dbname or self.dbname,
            user=user,
            password=password,
            autocommit=True,
        )


def _as_owner(command: t.List[str], owner: t.Optional[str]) -> t.List[str]:
    """PostgreSQL refuses to run as root: run its tools as owner then."""
    if owner is None:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", owner, "--", *command]
    return ["su", "-s", "/bin/sh", owner, "-c", shlex.join(command)]


def _cluster_owner() -> t.Optional[str]:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.fail("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")
    return None


@pytest.fixture(scope="session")
def postgres() -> t.Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 with password auth, an app role and two databases."""
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("no initdb in /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    owner = _cluster_owner()
    # Not pytest's tmp_path: its parents are private to root, PostgreSQL runs as owner.
    base = Path(tempfile.mkdtemp(prefix="neurondb-ref-pg-"))
    pwfile = base / "pwfile"
    pwfile.write_text(SUPERUSER_PASSWORD + "\n")
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (base, pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    data, logfile, port = base / "data", base / "server.log", free_port()
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "scram-sha-256"]
    initdb += [f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync"]
    done = subprocess.run(_as_owner(initdb, owner), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
    options += " -c fsync=off -c full_page_writes=off -c max_connections=100"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "30", "-o", options]
    done = subprocess.run(_as_owner([*pg_ctl, "start"], owner), capture_output=True, text=True, check=False)
    try:
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}{logfile.read_text()}"
        cluster = Postgres(port)
        _create_app_objects(cluster)
        yield cluster
    finally:
        subprocess.run(_as_owner([*pg_ctl, "-m", "fast", "stop"], owner), capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _create_app_objects(cluster: Postgres) -> None:
    """The app role owns its databases, as the postgresql_objects role sets them up.

    The second database stands in for the read-only path (a PgBouncer alias to the
    replicas): it holds one row the primary does not, so a read through it is visible.
    """
    with cluster.connect(superuser=True, dbname="postgres") as conn:
        password = APP_PASSWORD.replace("'", "''")
        conn.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {cluster.dbname} OWNER {APP_USER}")
        conn.execute(f"CREATE DATABASE {REPLICA_DB} OWNER {APP_USER}")
    with cluster.connect(dbname=REPLICA_DB) as conn:
        conn.execute(
            "CREATE TABLE neurondb_probe (id bigserial PRIMARY KEY, payload text, instance text,"
            " created_at timestamptz DEFAULT now())"
        )
        conn.execute(
            "INSERT INTO neurondb_probe (id, payload, instance) VALUES (%s, 'from-replica', 'seed')",
            (REPLICA_ROW_ID,),
        )


# --------------------------------------------------------------------------- service fixtures


@dataclass
class Stack:
    agent: Service
    api: Service
    frontend: t.Optional[Service] = None
    mcp: t.Optional[Service] = None


@pytest.fixture(scope="session")
def launcher() -> t.Iterator[Launcher]:
    workdir = Path(tempfile.mkdtemp(prefix="neurondb-ref-svc-"))
    started = Launcher(workdir)
    yield started
    started.close()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def refused_port() -> t.Iterator[int]:
    sock = refusing_socket()
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture(scope="session")
def offline(launcher: Launcher, refused_port: int) -> Stack:
    """agent and api whose database (and agent endpoint) refuse connections, and a frontend."""
    dead_db = {"DB_HOST": "127.0.0.1", "DB_PORT": str(refused_port), "DB_USER": "x", "DB_PASSWORD": "y"}
    stack = Stack(
        agent=launcher.spawn("agent", "agent-offline", dead_db),
        api=launcher.spawn(
            "api",
            "api-offline",
            {**dead_db, "JWT_SECRET": "s3cret", "NEURONAGENT_ENDPOINT": f"http://127.0.0.1:{refused_port}"},
        ),
        frontend=launcher.spawn("frontend", "web-1 <lab> & co", {}),
    )
    for service in (stack.agent, stack.api, stack.frontend):
        service.wait_ready()
    return stack


@pytest.fixture(scope="session")
def online(launcher: Launcher, postgres: Postgres) -> Stack:
    """agent (with a read-only path), api (pointing at that agent) and mcp on the real database."""
    read_path = {"DB_READ_HOST": "127.0.0.1", "DB_READ_PORT": str(postgres.port), "DB_READ_NAME": REPLICA_DB}
    agent = launcher.spawn("agent", "agent-1", {**postgres.env(), **read_path})
    api = launcher.spawn("api", "api-1", {**postgres.env(), "JWT_SECRET": "s3cret", "NEURONAGENT_ENDPOINT": agent.url})
    mcp_port = free_port()
    mcp_env = {"NEURONMCP_HTTP_ENABLED": "true", "NEURONMCP_HTTP_ADDR": f"127.0.0.1:{mcp_port}", "SERVER_PORT": None}
    mcp = launcher.spawn("mcp", "mcp-1", {**postgres.env(), **mcp_env}, port=mcp_port)
    stack = Stack(agent=agent, api=api, mcp=mcp)
    for service in (agent, api, mcp):
        service.wait_ready()
    return stack


# --------------------------------------------------------------------------- health without a database


def test_api_health_is_static_without_database(offline: Stack) -> None:
    for path in ("/health", "/api/v1/health"):
        reply = offline.api.get(path)
        assert reply.status == 200, path
        assert reply.json() == {"status": "ok", "kind": "api", "instance": "api-offline", "version": "1.0.0"}
    ready = offline.api.get("/api/v1/ready")
    assert ready.status == 503
    assert ready.json()["database"]["status"] == "down"


def test_agent_health_503_when_database_unreachable(offline: Stack, refused_port: int) -> None:
    started = time.monotonic()
    reply = offline.agent.get("/health")
    assert reply.status == 503
    document = reply.json()
    assert document["status"] == "error"
    assert document["database"]["status"] == "down"
    assert str(refused_port) in document["error"]
    assert "refused" in document["error"].lower()
    assert time.monotonic() - started < 2.5


def test_frontend_page_names_the_instance(offline: Stack) -> None:
    assert offline.frontend is not None
    reply = offline.frontend.get("/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert '<strong id="instance">web-1 &lt;lab&gt; &amp; co</strong>' in page
    assert "<lab>" not in page
    assert offline.frontend.get("/health").json()["instance"] == "web-1 <lab> & co"
    assert offline.frontend.get("/missing").status == 404


# --------------------------------------------------------------------------- headers and logs


def test_release_is_reported_only_when_set(offline: Stack, launcher: Launcher, refused_port: int) -> None:
    unset = offline.api.get("/api/v1/health")
    assert "X-NeuronDB-Release" not in unset.headers
    assert "release" not in unset.json()

    release = f"2.0.0-{uuid.uuid4().hex[:8]}"
    env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(refused_port), "JWT_SECRET": "s3cret", "NEURONDB_RELEASE": release}
    api = launcher.spawn("api", "api-release", env).wait_ready()
    for path in ("/health", "/api/v1/health", "/nope"):
        reply = api.get(path)
        assert reply.headers["X-NeuronDB-Release"] == release, path
    assert api.get("/api/v1/health").json() == {
        "status": "ok",
        "kind": "api",
        "instance": "api-release",
        "version": "1.0.0",
        "release": release,
    }
    assert metric(api.metrics(), "neurondb_reference_info", kind="api", release=release) == 1


@pytest.mark.parametrize(
    ("which", "method", "path", "status"),
    [
        ("agent", "GET", "/health", 503),
        ("api", "GET", "/api/v1/health", 200),
        ("frontend", "GET", "/", 200),
        ("frontend", "GET", "/nope", 404),
        ("api", "DELETE", "/health", 405),
        ("api", "BREW", "/health", 501),  # rejected by http.server itself
    ],
)
def test_instance_header_and_request_id_echo(offline: Stack, which: str, method: str, path: str, status: int) -> None:
    service = getattr(offline, which)
    request_id = f"req-{uuid.uuid4()}"
    reply = service.request(method, path, headers={"X-Request-ID": request_id})
    assert reply.status == status
    assert reply.headers["X-NeuronDB-Instance"] == service.name
    assert reply.headers["X-Request-ID"] == request_id


def test_request_id_generated_when_absent_or_unusable(offline: Stack) -> None:
    first = offline.api.get("/health").headers["X-Request-ID"]
    second = offline.api.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second
    for bad in ("has spaces in it", "x" * 300):
        replaced = offline.api.get("/health", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced), bad


def test_one_log_line_per_request(offline: Stack) -> None:
    assert offline.frontend is not None
    request_id = f"log-{uuid.uuid4().hex[:8]}"
    assert offline.frontend.get("/health?x=1", headers={"X-Request-ID": request_id}).status == 200
    pattern = re.compile(
        rf"INFO neurondb-frontend request_id={request_id} method=GET path=/health\?x=1 route=/health"
        r" status=200 duration_ms=\d+\.\d client=127\.0\.0\.1$",
        re.MULTILINE,
    )
    deadline = time.monotonic() + 5
    while not pattern.search(offline.frontend.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pattern.findall(offline.frontend.log_text())) == 1


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_and_5xx_errors(offline: Stack) -> None:
    agent = offline.agent
    before = agent.metrics()
    for attempt in range(3):
        assert agent.get("/health").status == 503, attempt
    for probe_id in (1, 2):
        assert agent.get(f"/api/v1/probe/{probe_id}").status == 503
    assert agent.get("/no/such/page").status == 404
    after = agent.metrics()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ours = {"kind": "agent", "instance": "agent-offline", "method": "GET"}
    assert delta("neurondb_http_requests_total", **ours, path="/health", status="503") == 3
    assert delta("neurondb_http_request_errors_total", **ours, path="/health", status="503") == 3
    assert delta("neurondb_http_requests_total", **ours, path="/api/v1/probe/{id}", status="503") == 2
    assert delta("neurondb_http_request_errors_total", **ours, path="/api/v1/probe/{id}") == 2
    assert delta("neurondb_http_requests_total", **ours, path="unmatched", status="404") == 1
    assert delta("neurondb_http_request_errors_total", path="unmatched") == 0
    assert delta("neurondb_http_request_duration_seconds_count", **ours, path="/health") == 3
    assert delta("neurondb_http_request_duration_seconds_bucket", **ours, path="/health", le="+Inf") == 3
    assert delta("neurondb_http_request_duration_seconds_sum", **ours, path="/health") > 0
    # Raw ids never become label values.
    paths = {labels.get("path", "") for name, labels, value in after}
    assert not [path for path in paths if path.startswith("/api/v1/probe/1")]
    assert metric(after, "neurondb_db_up", kind="agent", instance="agent-offline", target="primary") == 0
    assert abs(metric(after, "process_start_time_seconds") - time.time()) < 3600


def test_frontend_metrics_have_no_database_gauge(offline: Stack) -> None:
    assert offline.frontend is not None
    samples = offline.frontend.metrics()
    assert "neurondb_db_up" not in {sample[0] for sample in samples}
    assert metric(samples, "neurondb_reference_info", kind="frontend") == 1


# --------------------------------------------------------------------------- configuration and lifecycle


@pytest.mark.parametrize(
    ("kind", "env", "culprit"),
    [
        ("api", {}, "JWT_SECRET"),
        ("api", {"JWT_SECRET": "   "}, "JWT_SECRET"),
        ("agent", {"SERVER_PORT": "http"}, "SERVER_PORT"),
        ("frontend", {"SERVER_PORT": "70000"}, "SERVER_PORT"),
        ("agent", {"DB_PORT": "0"}, "DB_PORT"),
        ("agent", {"DB_SSLMODE": "sometimes"}, "DB_SSLMODE"),
        ("frontend", {"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ("mcp", {"NEURONMCP_HTTP_ADDR": "8082"}, "NEURONMCP_HTTP_ADDR"),
        ("mcp", {"NEURONMCP_HTTP_ENABLED": "maybe"}, "NEURONMCP_HTTP_ENABLED"),
        ("api", {"JWT_SECRET": "s", "NEURONAGENT_ENDPOINT": "agent:8080"}, "NEURONAGENT_ENDPOINT"),
        ("frontend", {"NEURONDB_RELEASE": "2.0\x1b[31m"}, "NEURONDB_RELEASE"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(kind: str, env: t.Dict[str, str], culprit: str) -> None:
    done = run_script(kind, {"SERVER_PORT": str(free_port()), **env})
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr
    assert culprit in done.stderr
    assert "listening" not in done.stdout


def test_port_in_use_exits_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        done = run_script("frontend", {"SERVER_PORT": str(busy.getsockname()[1])})
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1" in done.stderr


def test_sigterm_exits_0(launcher: Launcher) -> None:
    service = launcher.spawn("frontend", "web-term", {}).wait_ready()
    assert service.get("/health").status == 200
    started = time.monotonic()
    assert service.stop() == 0
    assert time.monotonic() - started < 5
    assert "received SIGTERM" in service.log_text()
    assert service.log_text().rstrip().endswith("stopped")


def test_sigterm_finishes_in_flight_request(launcher: Launcher) -> None:
    """A database that accepts TCP but never answers: /health gives up at ~2 s, even during shutdown."""
    silent = silent_socket()
    try:
        env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(silent.getsockname()[1]), "DB_USER": "x", "DB_PASSWORD": "y"}
        agent = launcher.spawn("agent", "agent-silent", env).wait_ready()
        answers: t.Dict[str, t.Any] = {}

        def ask() -> None:
            started = time.monotonic()
            answers["reply"] = agent.get("/health")
            answers["seconds"] = time.monotonic() - started

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.5)  # the request is now waiting on the database
        agent.proc.send_signal(signal.SIGTERM)
        asker.join(15)
        assert agent.proc.wait(10) == 0
    finally:
        silent.close()
    reply = answers["reply"]
    assert reply.status == 503
    assert reply.json()["database"]["status"] == "down"
    assert 1.5 < answers["seconds"] < 4.0


# --------------------------------------------------------------------------- MCP on stdio


def test_mcp_over_stdio_when_http_disabled(refused_port: int) -> None:
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sql_ping", "arguments": {}}},
    ]
    stdin = "".join(json.dumps(message) + "\n" for message in messages) + "{broken\n"
    env = {"NEURONMCP_HTTP_ENABLED": "false", "DB_HOST": "127.0.0.1", "DB_PORT": str(refused_port)}
    done = run_script("mcp", env, stdin=stdin)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [answer.get("id") for answer in answers] == [1, 2, 3, None]
    assert answers[0] == {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert [tool["name"] for tool in answers[1]["result"]["tools"]] == ["sql_ping"]
    assert answers[2]["result"]["isError"] is True  # the database refuses connections
    assert answers[3]["error"]["code"] == -32700
    assert "serving MCP on stdio" in done.stderr


# --------------------------------------------------------------------------- with a real database


def test_agent_health_ok_with_database(online: Stack) -> None:
    reply = online.agent.get("/health", headers={"X-Request-ID": "health-1"})
    assert reply.status == 200
    document = reply.json()
    assert document["status"] == "ok"
    assert document["instance"] == "agent-1"
    assert document["database"]["status"] == "up"
    assert document["database"]["latency_ms"] < 2000
    assert reply.headers["X-NeuronDB-Instance"] == "agent-1"
    assert reply.headers["X-Request-ID"] == "health-1"
    assert online.api.get("/api/v1/ready").status == 200


@pytest.mark.parametrize("which", ["agent", "api"])
def test_probe_write_then_read_back(online: Stack, postgres: Postgres, which: str) -> None:
    service = getattr(online, which)
    payload = f"probe {which} {uuid.uuid4()} ünïcode"
    written = service.post_json("/api/v1/probe", {"payload": payload})
    assert written.status == 201, written.body
    probe_id = written.json()["id"]
    assert isinstance(probe_id, int)
    assert written.json()["instance"] == service.name
    assert written.headers["Location"] == f"/api/v1/probe/{probe_id}"
    with postgres.connect() as conn:
        row = conn.execute("SELECT payload, instance FROM neurondb_probe WHERE id = %s", (probe_id,)).fetchone()
    assert row == (payload, service.name)

    read = service.get(f"/api/v1/probe/{probe_id}")
    assert read.status == 200
    document = read.json()
    assert (document["id"], document["payload"], document["instance"]) == (probe_id, payload, service.name)
    assert document["source"] == "primary"
    assert document["in_recovery"] is False
    assert service.get(f"/api/v1/probe/{probe_id + 1_000_000}").status == 404
    assert service.get(f"/api/v1/probe/{'9' * 19}").status == 404  # beyond bigint


def test_probe_rejects_bad_bodies(online: Stack) -> None:
    agent = online.agent
    assert agent.request("POST", "/api/v1/probe", body=b"{not json").status == 400
    assert agent.post_json("/api/v1/probe", {"payload": 42}).status == 400
    assert agent.post_json("/api/v1/probe", ["payload"]).status == 400
    assert agent.get("/api/v1/probe/abc").status == 404


def test_probe_read_through_read_path(online: Stack) -> None:
    """?replica=1 reads through DB_READ_* (a separate database here, so it shows)."""
    assert online.agent.get(f"/api/v1/probe/{REPLICA_ROW_ID}").status == 404
    reply = online.agent.get(f"/api/v1/probe/{REPLICA_ROW_ID}?replica=1")
    assert reply.status == 200
    assert reply.json()["payload"] == "from-replica"
    assert reply.json()["source"] == "replica"
    # The api has no DB_READ_*: it falls back to the primary and says so.
    fallback = online.api.get(f"/api/v1/probe/{REPLICA_ROW_ID}?replica=1")
    assert fallback.status == 404
    assert fallback.json()["source"] == "primary"


def test_probe_table_created_by_concurrent_first_writers(online: Stack, postgres: Postgres) -> None:
    with postgres.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS neurondb_probe")

    def write(number: int) -> Reply:
        service = online.agent if number % 2 else online.api
        return service.post_json("/api/v1/probe", {"payload": f"race-{number}"})

    with ThreadPoolExecutor(max_workers=12) as pool:
        replies = list(pool.map(write, range(12)))
    assert [reply.status for reply in replies] == [201] * 12, [reply.body for reply in replies]
    assert len({reply.json()["id"] for reply in replies}) == 12
    with postgres.connect() as conn:
        assert conn.execute("SELECT count(*) FROM neurondb_probe WHERE payload LIKE 'race-%'").fetchone()[0] == 12


def _kill_backends(postgres: Postgres, application_name: str) -> int:
    """Terminate the service's database sessions and wait until they are gone."""
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    with postgres.connect(superuser=True, dbname="postgres") as conn:
        killed = conn.execute(f"SELECT count(pg_terminate_backend(pid)) FROM ({query}) s", (application_name,))
        count = killed.fetchone()[0]
        deadline = time.monotonic() + 5
        while conn.execute(query, (application_name,)).fetchall() and time.monotonic() < deadline:
            time.sleep(0.05)
    return count


def test_dead_pooled_connections_are_replaced(online: Stack, postgres: Postgres) -> None:
    """After a failover or PgBouncer restart the pooled connections are dead: no false 503."""
    agent = online.agent

    def retries() -> int:
        return agent.log_text().count("a pooled primary connection was dead, retrying on a new one")

    assert agent.get("/health").status == 200
    assert _kill_backends(postgres, "neurondb-agent-reference") >= 1
    before = retries()
    assert agent.get("/health").status == 200
    assert retries() == before + 1
    # A write whose connection died before it was sent is safe to repeat, and is.
    assert agent.post_json("/api/v1/probe", {"payload": "warm"}).status == 201
    assert _kill_backends(postgres, "neurondb-agent-reference") >= 1
    before = retries()
    assert agent.post_json("/api/v1/probe", {"payload": "after-kill"}).status == 201
    assert retries() == before + 1


def test_metrics_with_database(online: Stack) -> None:
    agent = online.agent
    before = agent.metrics()
    assert agent.get("/health").status == 200
    after = agent.metrics()
    labels = {"kind": "agent", "instance": "agent-1"}
    assert metric(after, "neurondb_db_up", **labels, target="primary") == 1
    assert metric(after, "neurondb_db_up", **labels, target="replica") == 1
    ok = {"method": "GET", "path": "/health", "status": "200"}
    assert (
        metric(after, "neurondb_http_requests_total", **ok) - metric(before, "neurondb_http_requests_total", **ok) == 1
    )
    assert metric(after, "neurondb_http_request_errors_total", path="/health") == metric(
        before, "neurondb_http_request_errors_total", path="/health"
    )


def test_api_passes_agent_health_through(online: Stack, offline: Stack) -> None:
    request_id = f"pass-{uuid.uuid4().hex[:8]}"
    reply = online.api.get("/api/v1/agent/health", headers={"X-Request-ID": request_id})
    assert reply.status == 200
    assert reply.json()["kind"] == "agent"
    assert reply.json()["instance"] == "agent-1"
    assert reply.headers["X-NeuronDB-Upstream-Instance"] == "agent-1"
    assert reply.headers["X-NeuronDB-Instance"] == "api-1"
    assert f"request_id={request_id} method=GET path=/health" in online.agent.log_text()
    # No agent listening: a gateway error, counted as a 5xx.
    unreachable = offline.api.get("/api/v1/agent/health")
    assert unreachable.status == 502
    assert "agent at http://127.0.0.1:" in unreachable.json()["error"]


def test_mcp_jsonrpc_over_http(online: Stack) -> None:
    mcp = online.mcp
    assert mcp is not None
    assert mcp.get("/health").status == 200

    def call(message: t.Any) -> Reply:
        return mcp.post_json("/mcp", message)

    init = call({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}})
    assert init.status == 200
    assert init.json()["result"]["serverInfo"]["name"] == "neurondb-mcp-reference"
    assert init.json()["result"]["protocolVersion"] == "2025-03-26"
    assert call({"jsonrpc": "2.0", "id": "p", "method": "ping"}).json() == {"jsonrpc": "2.0", "id": "p", "result": {}}
    tools = call({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).json()["result"]["tools"]
    assert [tool["name"] for tool in tools] == ["sql_ping"]
    result = call({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "sql_ping"}}).json()
    assert result["result"]["isError"] is False
    assert result["result"]["content"][0]["text"].startswith("SELECT 1 ok")
    assert call({"jsonrpc": "2.0", "id": 4, "method": "nope"}).json()["error"]["code"] == -32601
    bad_tool = call({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "rm"}}).json()
    assert bad_tool["error"]["code"] == -32602
    notification = call({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (notification.status, notification.body) == (202, b"")
    batch = call([{"jsonrpc": "2.0", "id": 6, "method": "ping"}, {"jsonrpc": "2.0", "method": "x"}]).json()
    assert batch == [{"jsonrpc": "2.0", "id": 6, "result": {}}]
    broken = mcp.request("POST", "/mcp", body=b"{oops")
    assert broken.status == 400
    assert broken.json()["error"]["code"] == -32700
    assert mcp.get("/mcp").status == 405
