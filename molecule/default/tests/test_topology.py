"""The whole path of design.md: HTTPS → Nginx → app replicas → PgBouncer →
router → Patroni primary, with reads on the replicas."""

from __future__ import annotations

import json
import re
import shlex
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import EPHEMERAL, app_sql, get_host, wait_for

testinfra_hosts = ["ansible://mol-app1"]

API_REPLICAS = {"mol-app1", "mol-app2"}


def request(
    addresses: dict[str, str],
    tls: ssl.SSLContext,
    path: str,
    data: dict | None = None,
    timeout: float = 15,
    request_id: str | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    url = f"https://{addresses['mol-lb1']}{path}"
    body = json.dumps(data).encode() if data is not None else None
    headers = {"Content-Type": "application/json"} if body else {}
    if request_id:
        headers["X-Request-ID"] = request_id
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method="POST" if body else "GET", headers=headers)
    try:
        with urllib.request.urlopen(req, context=tls, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def edge_upstreams(prefix: str) -> dict[str, str]:
    """request id -> the upstream address(es) Nginx used, from its access log:
    which replica answered, for any service (no header of the service's own)."""
    log = get_host("mol-lb1").check_output(f"grep -F 'id={prefix}-' /var/log/nginx/neurondb-access.log || true")
    found = {}
    for line in log.splitlines():
        match = re.search(r"upstream=(\S+) urt=.* id=(\S+)$", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def test_https_reaches_both_api_replicas(addresses, tls) -> None:
    prefix = f"balance-{time.time_ns()}"
    for i in range(20):
        status, _headers, _body = request(addresses, tls, "/api/v1/health", request_id=f"{prefix}-{i}")
        assert status == 200
    seen = {upstream.rsplit(":", 1)[0] for upstream in edge_upstreams(prefix).values()}
    expected = {addresses[name] for name in API_REPLICAS}
    assert seen == expected, f"Nginx balanced over {seen}, expected {expected}"


def test_plain_http_redirects_to_https(addresses) -> None:
    req = urllib.request.Request(f"http://{addresses['mol-lb1']}/api/v1/health")
    opener = urllib.request.build_opener(NoRedirect())
    try:
        opener.open(req, timeout=5)
        raise AssertionError("plain HTTP was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 301
        assert exc.headers["Location"].startswith("https://")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_tls_below_1_2_is_refused(addresses) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    try:
        with socket.create_connection((addresses["mol-lb1"], 443), timeout=5) as raw, old.wrap_socket(raw):
            raise AssertionError("a TLS 1.1 handshake succeeded")
    except (ssl.SSLError, OSError):
        pass


def test_write_through_app_lands_on_primary_and_replicas(addresses, tls, connect, patroni_cluster, host) -> None:
    """An agent created through the edge (the agent's own API, with its key)
    is a row on the primary, then on every replica, and readable through
    PgBouncer's read-only alias."""
    key = Path(EPHEMERAL, "pki", "neuronagent-api-key").read_text().strip()
    name = f"topology-{time.time_ns()}"
    status, _headers, body = request(addresses, tls, "/agent/api/v1/agents", {"name": name}, token=key)
    assert status in (200, 201), body
    cluster = patroni_cluster()
    leader = next(m["name"] for m in cluster["members"] if m["role"] == "leader")
    replicas = [m["name"] for m in cluster["members"] if m["role"] != "leader"]
    query = "select count(*) from neurondb_agent.agents where name = %s"
    with connect(leader, dbname="neurondb") as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is False
        assert conn.execute(query, (name,)).fetchone()[0] == 1
    for replica in replicas:

        def replicated(replica: str = replica) -> bool:
            with connect(replica, dbname="neurondb") as conn:
                return conn.execute(query, (name,)).fetchone()[0] == 1

        wait_for(replicated, 30, f"agent {name} on replica {replica}")
    in_recovery, count = app_sql(
        host, "neurondb_ro", "select pg_is_in_recovery(), count(*) from agents where name = %s", (name,)
    )
    assert (in_recovery, count) == (True, 1)


# Runs inside mol-app1: 200 clients hold a transaction open at the same time.
CLIENTS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, psycopg
    clients = int(sys.argv[1])
    # The agent's own settings: no password on a command line.
    env = dict(line.split("=", 1) for line in open("/etc/neurondb/neuronagent.env") if "=" in line)
    password = json.loads(env["DB_PASSWORD"])
    barrier = threading.Barrier(clients)
    errors = []
    def client():
        try:
            with psycopg.connect(host="127.0.0.1", port=6432, dbname="neurondb", user="neurondb_app",
                                 password=password, connect_timeout=30) as conn:
                barrier.wait(timeout=60)
                conn.execute("select pg_sleep(0.3)")
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=client) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(len(errors))
    print("\\n".join(errors[:5]))
""")


def test_pgbouncer_multiplexes_200_clients(host, hostvars, addresses, connect) -> None:
    pool_size = int(hostvars.get("pgbouncer_default_pool_size", 25))
    app1 = addresses["mol-app1"]
    peak = {"servers": 0}
    done = threading.Event()

    def watch() -> None:
        with connect("mol-lb1", 5000) as conn:
            while not done.is_set():
                count = conn.execute(
                    "select count(*) from pg_stat_activity where usename = 'neurondb_app' "
                    "and datname = 'neurondb' and client_addr = %s",
                    (app1,),
                ).fetchone()[0]
                peak["servers"] = max(peak["servers"], count)
                time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = host.run(f"python3 -c {shlex.quote(CLIENTS_SCRIPT)} 200")
    finally:
        done.set()
        watcher.join()
    assert result.rc == 0, result.stderr
    failures = int(result.stdout.split()[0])
    assert failures == 0, result.stdout
    assert 0 < peak["servers"] <= pool_size, f"{peak['servers']} server connections for 200 clients"


def test_requests_survive_a_stopped_app_host(addresses, tls) -> None:
    subprocess.run(["docker", "stop", "-t", "5", "mol-app2"], check=True, capture_output=True)
    try:
        failures = []
        prefix = f"stopped-{time.time_ns()}"
        for i in range(30):
            for path in ("/api/v1/health", "/agent/health", "/"):
                status, _headers, _ = request(addresses, tls, path, request_id=f"{prefix}-{i}{path}")
                if status != 200:
                    failures.append((i, path, status))
        assert not failures, f"requests failed with mol-app2 stopped: {failures[:5]}"
        # Nginx's log: each was answered by mol-app1 (at the latest on a retry).
        answered_by = {upstream.rsplit(":", 1)[0] for upstream in edge_upstreams(prefix).values()}
        assert addresses["mol-app1"] in answered_by
    finally:
        subprocess.run(["docker", "start", "mol-app2"], check=True, capture_output=True)
        app2 = get_host("mol-app2")
        wait_for(lambda: app2.run("curl -sf http://127.0.0.1:8081/health").rc == 0, 120, "mol-app2 serving again")
