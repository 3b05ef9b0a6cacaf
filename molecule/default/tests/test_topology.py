"""The whole path of design.md: HTTPS → Nginx → app replicas → PgBouncer →
router → Patroni primary, with reads on the replicas."""

from __future__ import annotations

import json
import shlex
import socket
import ssl
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from conftest import get_host, wait_for

testinfra_hosts = ["ansible://mol-app1"]

API_REPLICAS = {"mol-app1", "mol-app2"}


def request(
    addresses: dict[str, str], tls: ssl.SSLContext, path: str, data: dict | None = None, timeout: float = 15
) -> tuple[int, dict[str, str], bytes]:
    url = f"https://{addresses['mol-lb1']}{path}"
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(
        url, data=body, method="POST" if body else "GET", headers={"Content-Type": "application/json"} if body else {}
    )
    try:
        with urllib.request.urlopen(req, context=tls, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_https_reaches_both_api_replicas(addresses, tls) -> None:
    seen = set()
    for _ in range(20):
        status, headers, _body = request(addresses, tls, "/api/v1/health")
        assert status == 200
        seen.add(headers.get("X-NeuronDB-Instance"))
    assert seen == API_REPLICAS, f"Nginx balanced over {seen}, expected {API_REPLICAS}"


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


def test_write_through_app_lands_on_primary_and_replicas(addresses, tls, connect, patroni_cluster) -> None:
    marker = f"topology-{time.time_ns()}"
    status, headers, body = request(addresses, tls, "/agent/api/v1/probe", {"payload": marker})
    assert status == 201, body
    probe_id = json.loads(body)["id"]
    assert headers.get("X-Request-ID"), "the request id was not passed through"
    cluster = patroni_cluster()
    leader = next(m["name"] for m in cluster["members"] if m["role"] == "leader")
    replicas = [m["name"] for m in cluster["members"] if m["role"] != "leader"]
    with connect(leader, dbname="neurondb") as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone()[0] is False
        row = conn.execute("select payload from neurondb_probe where id = %s", (probe_id,)).fetchone()
        assert row == (marker,)
    for name in replicas:

        def replicated(name: str = name) -> bool:
            with connect(name, dbname="neurondb") as conn:
                return conn.execute("select payload from neurondb_probe where id = %s", (probe_id,)).fetchone() == (
                    marker,
                )

        wait_for(replicated, 30, f"probe {probe_id} on replica {name}")
    # And the app reads it back through PgBouncer's read-only alias.
    status, _headers, body = request(addresses, tls, f"/agent/api/v1/probe/{probe_id}?replica=1")
    assert status == 200, body
    assert json.loads(body)["payload"] == marker


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
        for i in range(30):
            for path in ("/api/v1/health", "/agent/health", "/"):
                status, headers, _ = request(addresses, tls, path)
                if status != 200:
                    failures.append((i, path, status))
                elif headers.get("X-NeuronDB-Instance") != "mol-app1":
                    failures.append((i, path, headers.get("X-NeuronDB-Instance")))
        assert not failures, f"requests failed with mol-app2 stopped: {failures[:5]}"
    finally:
        subprocess.run(["docker", "start", "mol-app2"], check=True, capture_output=True)
        app2 = get_host("mol-app2")
        wait_for(lambda: app2.run("curl -sf http://127.0.0.1:8081/health").rc == 0, 120, "mol-app2 serving again")
