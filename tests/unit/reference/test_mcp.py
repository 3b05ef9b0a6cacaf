# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""neurondb-mcp, as packaged: stdio first, optional HTTP, and only its own variables."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import typing as t
import urllib.parse

import pytest
from conftest import AGENT_DB, AGENT_PASSWORD, AGENT_USER, Installed, Postgres
from support import Launcher, bearer, free_port, request, run, wait_for

MESSAGES = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "sql_ping", "arguments": {}}},
    {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "drop_everything"}},
    {"jsonrpc": "2.0", "id": 6, "method": "resources/nope"},
]


def neurondb_env(postgres: Postgres, port: t.Optional[int] = None) -> t.Dict[str, str]:
    return {
        "NEURONDB_HOST": "127.0.0.1",
        "NEURONDB_PORT": str(port or postgres.port),
        "NEURONDB_DATABASE": AGENT_DB,
        "NEURONDB_USER": AGENT_USER,
        "NEURONDB_PASSWORD": AGENT_PASSWORD,
    }


def converse(installed: Installed, env: t.Dict[str, str], messages: t.Sequence[t.Any] = tuple(MESSAGES)) -> t.Any:
    # A str is sent as it is (a broken line); anything else as JSON.
    stdin = "".join((message if isinstance(message, str) else json.dumps(message)) + "\n" for message in messages)
    return run(installed.bin("neurondb-mcp"), {"NEURONDB_LOG_FORMAT": "json", **env}, stdin=stdin)


def test_stdio_conversation_and_exit_0_at_eof(installed: Installed, postgres: Postgres, agent_db: str) -> None:
    done = converse(installed, neurondb_env(postgres), [*MESSAGES, "{broken"])
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: the protocol, nothing else
    assert [answer["id"] for answer in answers] == [1, 2, 3, 4, 5, 6, None]
    assert answers[0]["result"]["protocolVersion"] == "2025-03-26"
    assert answers[0]["result"]["serverInfo"]["name"] == "neurondb-mcp"
    assert answers[1] == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert [tool["name"] for tool in answers[2]["result"]["tools"]] == ["sql_ping"]
    assert answers[3]["result"]["isError"] is False, answers[3]
    assert answers[3]["result"]["content"][0]["text"].startswith("SELECT 1 returned 1")
    assert answers[4]["error"]["code"] == -32602
    assert answers[5]["error"]["code"] == -32601
    assert answers[6]["error"]["code"] == -32700
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    assert [line["msg"] for line in logs][-1] == "stdin closed, exiting"
    assert AGENT_PASSWORD not in done.stderr


def test_reads_neurondb_variables_not_db_or_server(installed: Installed, postgres: Postgres, agent_db: str) -> None:
    closed = free_port()
    # DB_* name the working database, NEURONDB_* a closed port: the tool must fail.
    db_env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(postgres.port), "DB_NAME": AGENT_DB}
    db_env |= {"DB_USER": AGENT_USER, "DB_PASSWORD": AGENT_PASSWORD, "SERVER_PORT": str(free_port())}
    failing = converse(installed, {**db_env, **neurondb_env(postgres, port=closed)}, MESSAGES[4:5])
    answer = json.loads(failing.stdout)
    assert answer["result"]["isError"] is True
    assert str(closed) in answer["result"]["content"][0]["text"] or "refused" in answer["result"]["content"][0]["text"]
    # Only DB_*: NEURONDB_* defaults (localhost:5432, database postgres) apply, not DB_*.
    defaults = converse(installed, {**db_env, "NEURONDB_PORT": str(closed)}, MESSAGES[4:5])
    assert json.loads(defaults.stdout)["result"]["isError"] is True
    # A connection string wins over the separate variables.
    password = urllib.parse.quote(AGENT_PASSWORD, safe="")
    dsn = f"postgresql://{AGENT_USER}:{password}@127.0.0.1:{postgres.port}/{AGENT_DB}"
    with_dsn = converse(
        installed, {**neurondb_env(postgres, port=closed), "NEURONDB_CONNECTION_STRING": dsn}, MESSAGES[4:5]
    )
    assert json.loads(with_dsn.stdout)["result"]["isError"] is False, with_dsn.stdout


def start_http(
    launcher: Launcher, installed: Installed, env: t.Dict[str, str], token: t.Optional[str] = "mcp-token"
) -> t.Any:
    port = free_port()
    full = {"NEURONMCP_HTTP_ENABLED": "true", "NEURONMCP_HTTP_ADDR": f"127.0.0.1:{port}", "NEURONDB_LOG_FORMAT": "json"}
    if token:
        full["NEURONMCP_AUTH_TOKEN"] = token
    full.update(env)
    proc = launcher.spawn(installed.bin("neurondb-mcp"), full, port=port, stdin=subprocess.PIPE, name="neurondb-mcp")
    return proc.wait_listening()


def test_exits_0_when_stdin_closes_even_with_http(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str
) -> None:
    mcp = start_http(launcher, installed, neurondb_env(postgres))
    assert mcp.get("/health").status == 200
    mcp.proc.stdin.close()
    assert mcp.wait_exit(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mcp.port), timeout=1).close()


def test_http_transport_with_bearer_auth(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str
) -> None:
    mcp = start_http(launcher, installed, neurondb_env(postgres))
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "sql_ping"}}
    assert mcp.post("/mcp", call).status == 401
    assert mcp.post("/mcp", call, headers=bearer("wrong")).status == 401
    reply = mcp.post("/mcp", call, headers=bearer("mcp-token"))
    assert reply.status == 200
    assert reply.json()["result"]["isError"] is False
    notification = mcp.post(
        "/mcp", {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=bearer("mcp-token")
    )
    assert (notification.status, notification.body) == (202, b"")
    assert mcp.post("/mcp", b"{oops", headers=bearer("mcp-token")).json()["error"]["code"] == -32700
    assert mcp.get("/health").json() == {"status": "ok"}  # no auth for health and metrics
    assert (
        'neuronmcp_http_requests_total{method="POST",path="/mcp",status="401"} 2' in mcp.get("/metrics").body.decode()
    )


def test_auth_disabled(launcher: Launcher, installed: Installed, postgres: Postgres) -> None:
    mcp = start_http(launcher, installed, {"NEURONMCP_AUTH_DISABLED": "true"}, token=None)
    assert mcp.post("/mcp", {"jsonrpc": "2.0", "id": 1, "method": "ping"}).json() == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {},
    }


def test_http_without_a_token_is_a_configuration_error(installed: Installed) -> None:
    done = run(
        installed.bin("neurondb-mcp"),
        {"NEURONMCP_HTTP_ENABLED": "true", "NEURONMCP_HTTP_ADDR": f"127.0.0.1:{free_port()}"},
    )
    assert done.returncode == 1
    assert "NEURONMCP_AUTH_TOKEN" in done.stderr


def test_default_http_address_is_the_agents_port(launcher: Launcher, installed: Installed) -> None:
    env = {"NEURONMCP_HTTP_ENABLED": "true", "NEURONMCP_AUTH_DISABLED": "true", "NEURONDB_LOG_FORMAT": "json"}
    mcp = launcher.spawn(installed.bin("neurondb-mcp"), env, stdin=subprocess.PIPE, name="neurondb-mcp")

    def said() -> t.Any:
        return [line for line in mcp.log_lines() if line["msg"] in ("HTTP transport listening", "cannot listen")]

    lines = wait_for(said, 10, "the HTTP transport to start or fail")
    assert lines[0]["address"] == "0.0.0.0:8080"  # listening there, or 8080 is taken on this machine
    mcp.proc.stdin.close()
    assert mcp.wait_exit(10) in (0, 1)


def test_server_sent_events_arrive_unbuffered(launcher: Launcher, installed: Installed) -> None:
    mcp = start_http(launcher, installed, {})
    sock = socket.create_connection(("127.0.0.1", mcp.port), timeout=5)
    started = time.monotonic()
    sock.sendall(
        b"GET /mcp/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer mcp-token\r\nAccept: text/event-stream\r\n\r\n"
    )
    data, arrivals = b"", []
    while len(arrivals) < 3:
        chunk = sock.recv(4096)
        assert chunk, "the stream ended"
        now = time.monotonic() - started
        data += chunk
        # Events are counted in the body only, each when its blank line arrives.
        events_so_far = data.partition(b"\r\n\r\n")[2].count(b"\n\n")
        arrivals += [now] * (events_so_far - len(arrivals))
    sock.close()
    head, _sep, body = data.partition(b"\r\n\r\n")
    assert b"200 OK" in head.split(b"\r\n")[0]
    assert b"content-type: text/event-stream" in head.lower()
    events = [block for block in body.decode().split("\n\n") if block]
    assert events[0].startswith("id: 0\nevent: endpoint\n")
    assert "event: heartbeat" in events[1]
    assert json.loads(events[1].split("data: ", 1)[1])["count"] == 1
    assert arrivals[0] < 1.0, arrivals  # the first event right away, not after a buffer fills
    assert 0.5 < arrivals[2] - arrivals[1] < 2.0, arrivals  # then one a second
    assert request(mcp.port, "GET", "/mcp/stream").status == 401


def test_schema_file_is_idempotent_and_needs_pgcrypto(installed: Installed, postgres: Postgres) -> None:
    import psycopg

    sql = installed.sql("/usr/share/neuronmcp/sql/neuron-mcp.sql")
    bare = postgres.create_database(f"mcp_bare_{time.monotonic_ns()}", AGENT_USER)
    with postgres.connect(bare, AGENT_USER, AGENT_PASSWORD) as conn, pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute(sql)  # gen_random_bytes: pgcrypto is created by a superuser first
    name = postgres.create_database(f"mcp_{time.monotonic_ns()}", AGENT_USER)
    with postgres.connect(name) as conn:
        conn.execute("CREATE EXTENSION pgcrypto")
    with postgres.connect(name, AGENT_USER, AGENT_PASSWORD) as conn:
        conn.execute(sql)
        conn.execute(sql)
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'neurondb' ORDER BY 1").fetchall()
    assert tables == [("mcp_settings",), ("mcp_tool_calls",)]
