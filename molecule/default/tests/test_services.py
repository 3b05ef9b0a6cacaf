"""The NeuronDB services by their real contract (../shared/neurondb-services.md),
through the HTTPS edge on mol-lb1, as a browser or an operator reaches them.

Every check here holds for what the real services offer: the frontend's `/`,
the API's `/api/v1/health` and WebSockets, the agent's API-key protected API
and WebSocket, NeuronMCP's event stream, the API's MCP child process. None
relies on an extra of the collection's reference packages.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import EPHEMERAL, PROJECT, app_sql, get_host, run_playbook, wait_for

testinfra_hosts = ["ansible://mol-app1"]

API_HOSTS = ("mol-app1", "mol-app2")


# -- small clients ---------------------------------------------------------------------


def https(
    addresses: dict[str, str],
    tls: ssl.SSLContext,
    path: str,
    *,
    data: Any = None,
    token: str | None = None,
    timeout: float = 15,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"https://{addresses['mol-lb1']}{path}",
        data=json.dumps(data).encode() if data is not None else None,
        method="POST" if data is not None else "GET",
        headers=headers,
    )
    try:
        with urllib.request.urlopen(req, context=tls, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def websocket_echo(address: str, tls: ssl.SSLContext, path: str, token: str, message: str) -> list[str]:
    """Open a WebSocket through the edge (RFC 6455), send one text frame, and
    return the text frames received within a few seconds."""
    raw = socket.create_connection((address, 443), timeout=10)
    sock = tls.wrap_socket(raw, server_hostname=address)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"{path}: connection closed during the handshake: {head!r}"
        head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode()
    assert " 101 " in status_line, f"{path}: no upgrade through the edge: {head[:300]!r}"
    buffer = head.split(b"\r\n\r\n", 1)[1]
    payload = message.encode()
    mask = os.urandom(4)
    header = (
        bytes([0x81, 0x80 | len(payload)])
        if len(payload) < 126
        else bytes([0x81, 0xFE]) + struct.pack("!H", len(payload))
    )
    sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    texts: list[str] = []
    sock.settimeout(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(message in t for t in texts):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + length:
                break
            if opcode == 0x1:
                texts.append(buffer[offset : offset + length].decode())
            buffer = buffer[offset + length :]
    sock.close()
    return texts


@pytest.fixture(scope="module")
def api_token(addresses: dict[str, str], tls: ssl.SSLContext, hostvars: dict[str, Any]) -> str:
    """A session of the admin, whose password the API stored on its first start."""
    status, _, body = https(
        addresses,
        tls,
        "/api/v1/auth/login",
        data={"username": "admin", "password": hostvars["neurondesktop_api_admin_password"]},
    )
    assert status == 200, body
    return json.loads(body)["token"]


@pytest.fixture(scope="module")
def agent_key() -> str:
    """The key the collection made with the agent's generate-key and gave the API."""
    return Path(EPHEMERAL, "pki", "neuronagent-api-key").read_text().strip()


@pytest.fixture(scope="module")
def profile(addresses: dict[str, str], tls: ssl.SSLContext, api_token: str) -> dict[str, Any]:
    status, _, body = https(addresses, tls, "/api/v1/profiles", token=api_token)
    assert status == 200, body
    profiles = json.loads(body)
    profiles = profiles.get("profiles", profiles) if isinstance(profiles, dict) else profiles
    assert len(profiles) == 1, f"one default profile expected, got {profiles}"
    return profiles[0]


# -- the paths of every tier -----------------------------------------------------------


def test_frontend_page_and_api_health_through_the_edge(addresses, tls) -> None:
    status, headers, body = https(addresses, tls, "/")
    assert status == 200 and headers.get("Content-Type", "").startswith("text/html"), (status, body[:200])
    status, _, body = https(addresses, tls, "/api/v1/health")
    assert status == 200, body


def test_metrics_are_not_public(addresses, tls) -> None:
    for path in ("/metrics", "/agent/metrics", "/mcp/metrics"):
        status, _, _ = https(addresses, tls, path)
        assert status == 404, f"{path} answered {status} on the public edge"


def test_agent_queries_its_unqualified_tables_through_pgbouncer(addresses, tls, agent_key) -> None:
    """The agent's tables live in neurondb_agent and it names them unqualified:
    this answers only when its search_path took effect through PgBouncer."""
    status, _, body = https(addresses, tls, "/agent/api/v1/agents", token=agent_key)
    assert status == 200, body
    status, _, _ = https(addresses, tls, "/agent/api/v1/agents", token="not-a-key")
    assert status == 401


def test_search_path_asked_for_is_the_one_in_effect(host) -> None:
    """What NeuronAgent asks for at connection start is what a pooled
    connection has: PgBouncer drops the startup parameter, the role carries it."""
    (search_path,) = app_sql(host, "neurondb", "show search_path", options="-c search_path=neurondb_agent,public")
    assert search_path == "neurondb_agent, public"


def test_websockets_reach_the_api_and_the_agent(addresses, tls, api_token, agent_key, profile) -> None:
    address = addresses["mol-lb1"]
    for path, token in (
        ("/api/v1/system-metrics/ws", api_token),
        (f"/api/v1/profiles/{profile['id']}/agent/ws", api_token),
        ("/agent/api/v1/ws", agent_key),
    ):
        marker = f"ping-{time.time_ns()}"
        texts = websocket_echo(address, tls, path, token, marker)
        assert any(marker in t for t in texts), f"{path}: no round trip, got {texts}"


def test_mcp_event_stream_is_not_buffered(addresses, tls, hostvars) -> None:
    """Server-sent events arrive one by one as the MCP sends them, not in one
    batch when a buffer fills or the stream ends."""
    req = urllib.request.Request(
        f"https://{addresses['mol-lb1']}/mcp/mcp/stream",
        headers={"Authorization": f"Bearer {hostvars['neuronmcp_auth_token']}"},
    )
    started = time.monotonic()
    arrivals: list[float] = []
    with urllib.request.urlopen(req, context=tls, timeout=10) as response:
        assert response.headers.get("Content-Type", "").startswith("text/event-stream")
        while len(arrivals) < 3:
            line = response.readline()
            assert line, "the stream ended"
            if line.startswith(b"data:"):
                arrivals.append(time.monotonic() - started)
    assert arrivals[0] < 3, f"the first event took {arrivals[0]:.1f} s"
    assert arrivals[2] - arrivals[0] > 0.5, f"events arrived together: {arrivals}"


def test_api_reaches_the_agent_with_the_provisioned_key(addresses, tls, api_token, profile) -> None:
    status, _, body = https(addresses, tls, f"/api/v1/profiles/{profile['id']}/agent/health", token=api_token)
    assert status == 200, body


def test_every_api_host_runs_its_mcp_child() -> None:
    for name in API_HOSTS:
        host = get_host(name)
        pid = host.run("systemctl show -p MainPID --value neurondesktop-api").stdout.strip()
        assert pid not in ("", "0"), f"{name}: the API is not running"
        children = host.run(f"pgrep -P {pid} -a").stdout
        assert "neurondb-mcp" in children, f"{name}: no NeuronMCP child of the API: {children!r}"


def test_an_api_host_started_later_serves_the_stored_profile(addresses, tls, api_token, profile) -> None:
    """The profile lives in the database, made once: a replica (re)started
    later serves the same one, and accepts a session made on another."""
    app2 = get_host("mol-app2")
    assert app2.run("systemctl restart neurondesktop-api").rc == 0
    wait_for(lambda: app2.run("curl -sf http://127.0.0.1:8081/health").rc == 0, 60, "the API on mol-app2")
    result = app2.run(f"curl -sf -H 'Authorization: Bearer {api_token}' http://127.0.0.1:8081/api/v1/profiles")
    assert result.rc == 0, result.stderr
    served = json.loads(result.stdout)
    served = served.get("profiles", served) if isinstance(served, dict) else served
    assert [p["id"] for p in served] == [profile["id"]]


# -- a preloaded extension added to the running cluster --------------------------------


def test_preload_extension_rolls_with_no_failed_write(connect, patroni_cluster) -> None:
    """pg_cron (Debian's package, passed as a user's .deb would be) added to
    the running cluster: every member restarts, the primary only after a
    switchover, while the write probe counts failed and lost writes."""
    app1 = get_host("mol-app1")
    workdir = Path(EPHEMERAL, "preload")
    workdir.mkdir(exist_ok=True)
    db1 = get_host("mol-db1")
    # The lab image caches Debian's package; apt-get download fetches it otherwise.
    listing = "ls /var/cache/apt/archives/ | grep '^postgresql-17-cron_'"
    if db1.run(listing).rc != 0:
        db1.run("cd /var/cache/apt/archives && apt-get download -q postgresql-17-cron")
    deb_name = db1.run(listing).stdout.split()[0]
    deb = workdir / deb_name
    subprocess.run(["docker", "cp", f"mol-db1:/var/cache/apt/archives/{deb_name}", str(deb)], check=True)
    digest = subprocess.run(["sha256sum", str(deb)], check=True, capture_output=True, text=True).stdout.split()[0]
    leader_before = next(m["name"] for m in patroni_cluster()["members"] if m["role"] == "leader")

    probe = "/opt/neurondb/preload-probe"
    app1.run(f"mkdir -p {probe}")
    subprocess.run(
        ["docker", "cp", os.path.join(PROJECT, "playbooks", "files", "write_probe.py"), f"mol-app1:{probe}/probe.py"],
        check=True,
    )
    run_id = f"preload-{time.time_ns()}"
    start = app1.run(
        f"rm -f {probe}/stop {probe}/summary.json; nohup python3 {probe}/probe.py --run-id {run_id}"
        f" --out {probe}/summary.json --stop-file {probe}/stop --duration 1500 > {probe}/probe.log 2>&1 &"
    )
    assert start.rc == 0, start.stderr
    try:
        # The role's default (pgvector, NeuronDB's stand-in in the lab) and pg_cron.
        extensions = [
            {"name": "vector", "package": "postgresql-17-pgvector", "databases": ["neurondb"]},
            {
                "name": "pg_cron",
                "deb": str(deb),
                "checksum": f"sha256:{digest}",
                "preload": "pg_cron",
                "databases": ["postgres"],
            },
        ]
        run = run_playbook(
            os.path.join(PROJECT, "playbooks", "site.yml"), {"postgresql_extensions": extensions}, timeout=1500
        )
        assert run.returncode == 0, run.summary()
    finally:
        app1.run(f"touch {probe}/stop")
        wait_for(lambda: app1.file(f"{probe}/summary.json").exists, 60, "the probe's summary")
    summary = json.loads(app1.file(f"{probe}/summary.json").content_string)
    assert summary["failed"] == 0, f"failed writes during the rolling restart: {summary}"
    assert summary["acked"] > 0
    with connect("mol-lb1", 5000, dbname="neurondb") as conn:
        stored = {
            row[0] for row in conn.execute("select id from neurondb_drill_probe where run = %s", (run_id,)).fetchall()
        }
    lost = set(summary["acked_ids"]) - stored
    assert not lost, f"{len(lost)} acknowledged writes lost"
    cluster = patroni_cluster()
    assert next(m["name"] for m in cluster["members"] if m["role"] == "leader") != leader_before
    for member in cluster["members"]:
        with connect(member["name"]) as conn:
            libraries = conn.execute("show shared_preload_libraries").fetchone()[0]
            assert "pg_cron" in libraries.split(","), f"{member['name']}: {libraries}"
            assert not member.get("pending_restart"), member
    with connect(next(m["name"] for m in cluster["members"] if m["role"] == "leader")) as conn:
        assert conn.execute("select 1 from pg_extension where extname = 'pg_cron'").fetchone()
