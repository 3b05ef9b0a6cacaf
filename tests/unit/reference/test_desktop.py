# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""neurondesktop (the Desktop API), as packaged: settings, first start, MCP children, gateways."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import threading
import typing as t
from pathlib import Path

import pytest
from conftest import AGENT_DB, AGENT_PASSWORD, AGENT_USER, DESK_PASSWORD, DESK_USER, Installed, Postgres
from support import PYTHON, Launcher, Proc, WsClient, bearer, free_port, request, run, wait_for

JWT_SECRET = "jwt-secret-for-tests"
ADMIN_PASSWORD = "first admin password"
OIDC = {
    "OIDC_ISSUER_URL": "http://127.0.0.1:9/realms/x",  # never contacted at start
    "OIDC_CLIENT_ID": "desktop",
    "OIDC_REDIRECT_URL": "https://desktop.example/callback",
}


class McpWrapper:
    """An MCP binary path for the profile: records each child's pid and environment, then runs neurondb-mcp."""

    def __init__(self, directory: Path, installed: Installed) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / "neurondb-mcp-wrapper"
        command = " ".join(f"'{part}'" for part in installed.bin("neurondb-mcp"))
        self.path.write_text(
            f'#!/bin/sh\necho "$$" >> "{directory}/pids"\nenv > "{directory}/env.$$"\nexec {command}\n'
        )
        self.path.chmod(self.path.stat().st_mode | stat.S_IXUSR)

    def pids(self) -> t.List[int]:
        pids = self.directory / "pids"
        return [int(line) for line in pids.read_text().split()] if pids.exists() else []

    def env(self, pid: int) -> t.Dict[str, str]:
        lines = (self.directory / f"env.{pid}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (its parent has not reaped it yet).
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ", 1)[1].startswith("Z"))


def desktop_env(postgres: Postgres, dbname: str, **extra: str) -> t.Dict[str, str]:
    env = {
        "SERVER_HOST": "127.0.0.1",
        "LOG_FORMAT": "json",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": str(postgres.port),
        "DB_NAME": dbname,
        "DB_USER": DESK_USER,
        "DB_PASSWORD": DESK_PASSWORD,
        "AUTH_MODE": "jwt",
        "JWT_SECRET": JWT_SECRET,
    }
    env.update(extra)
    return env


def start_desktop(launcher: Launcher, installed: Installed, env: t.Dict[str, str], wait: bool = True) -> Proc:
    port = free_port()
    proc = launcher.spawn(installed.bin("neurondesktop"), {**env, "SERVER_PORT": str(port)}, port=port)
    return proc.wait_listening() if wait else proc


def login(desktop: Proc, password: str = ADMIN_PASSWORD) -> str:
    reply = desktop.post("/api/v1/auth/login", {"username": "admin", "password": password})
    assert reply.status == 200, reply.body
    return reply.json()["token"]


def stored_profile(postgres: Postgres, dbname: str) -> t.Dict[str, t.Any]:
    with postgres.connect(dbname) as conn:
        cursor = conn.execute("SELECT * FROM profiles WHERE is_default")
        row = cursor.fetchone()
        assert row is not None
        return dict(zip([column.name for column in cursor.description], row, strict=True))


# --------------------------------------------------------------------------- the stack under test


@pytest.fixture(scope="module")
def agent_key(launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str) -> t.Tuple[Proc, str]:
    port = free_port()
    env = {**postgres.agent_env(), "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port)}
    agent = launcher.spawn(installed.bin("neuronagent"), env, port=port).wait_listening()
    done = run([*installed.bin("neuronagent"), "generate-key", "--name", "desktop"], postgres.agent_env())
    assert done.returncode == 0, done.stderr
    return agent, done.stdout.strip()


def first_start_env(agent: Proc, key: str, postgres: Postgres, wrapper: t.Optional[McpWrapper]) -> t.Dict[str, str]:
    env = {
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        "NEURONAGENT_ENDPOINT": f"http://127.0.0.1:{agent.port}",
        "NEURONAGENT_API_KEY": key,
        "NEURONDB_HOST": "127.0.0.1",
        "NEURONDB_PORT": str(postgres.port),
        "NEURONDB_DATABASE": AGENT_DB,
        "NEURONDB_USER": AGENT_USER,
        "NEURONDB_PASSWORD": AGENT_PASSWORD,
    }
    if wrapper is not None:
        env["NEURONMCP_BINARY_PATH"] = str(wrapper.path)
    return env


class Desk(t.NamedTuple):
    proc: Proc
    dbname: str
    wrapper: McpWrapper
    token: str
    profile_id: str


@pytest.fixture(scope="module")
def desk(
    launcher: Launcher,
    installed: Installed,
    postgres: Postgres,
    desk_template: str,
    agent_key: t.Tuple[Proc, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Desk:
    """One API on its own database, with a profile pointing at the agent and an MCP child."""
    dbname = postgres.create_database("desk_shared", DESK_USER, desk_template)
    wrapper = McpWrapper(tmp_path_factory.mktemp("mcp"), installed)
    agent, key = agent_key
    env = desktop_env(postgres, dbname, **first_start_env(agent, key, postgres, wrapper), LOG_LEVEL="debug")
    proc = start_desktop(launcher, installed, env)
    # The children start beside the HTTP server: the API listens before they are ready.
    wait_for(lambda: any(line["msg"] == "MCP child ready" for line in proc.log_lines()), 10, "the MCP child")
    token = login(proc)
    profiles = proc.get("/api/v1/profiles", headers=bearer(token)).json()
    return Desk(proc, dbname, wrapper, token, profiles[0]["id"])


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AUTH_MODE": "jwt"}, ["JWT_SECRET"]),
        ({}, ["OIDC_ISSUER_URL", "OIDC_CLIENT_ID", "OIDC_REDIRECT_URL"]),  # the default mode is oidc
        ({"AUTH_MODE": "oidc", "OIDC_ISSUER_URL": "https://id.example"}, ["OIDC_CLIENT_ID", "OIDC_REDIRECT_URL"]),
        ({"AUTH_MODE": "hybrid", **OIDC}, ["JWT_SECRET"]),
        ({"AUTH_MODE": "hybrid", "JWT_SECRET": "s"}, ["OIDC_ISSUER_URL", "OIDC_CLIENT_ID", "OIDC_REDIRECT_URL"]),
        ({"AUTH_MODE": "ldap"}, ["AUTH_MODE"]),
        ({"AUTH_MODE": "jwt", "JWT_SECRET": "s", "SESSION_SECURE": "sometimes"}, ["SESSION_SECURE"]),
    ],
)
def test_configuration_errors_exit_1_naming_the_variables(
    installed: Installed, env: t.Dict[str, str], named: t.List[str]
) -> None:
    # No database is reachable here: the settings are checked before it.
    done = run(installed.bin("neurondesktop"), {"DB_PORT": str(free_port()), **env})
    assert done.returncode == 1
    for name in named:
        assert name in done.stderr, done.stderr
    assert json.loads(done.stderr.splitlines()[-1])["level"] == "error"


def test_exits_1_when_the_database_cannot_be_reached(installed: Installed, postgres: Postgres) -> None:
    env = desktop_env(postgres, "neurondesk", DB_PORT=str(free_port()))
    done = run(installed.bin("neurondesktop"), env)
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr
    assert DESK_PASSWORD not in done.stderr


def test_exits_1_without_its_schema(installed: Installed, postgres: Postgres) -> None:
    dbname = postgres.create_database("desk_bare", DESK_USER)
    done = run(installed.bin("neurondesktop"), desktop_env(postgres, dbname))
    assert done.returncode == 1
    message = json.loads(done.stderr.splitlines()[-1])["msg"]
    assert 'relation "users" does not exist' in message
    assert "/usr/share/neurondesktop/neurondesktop.sql" in message


def test_oidc_mode_starts_without_contacting_the_issuer(
    launcher: Launcher, installed: Installed, postgres: Postgres, desk_db: str
) -> None:
    env = desktop_env(postgres, desk_db, AUTH_MODE="oidc", JWT_SECRET="", **OIDC)
    desktop = start_desktop(launcher, installed, env)
    assert desktop.get("/health").status == 200
    assert desktop.get("/api/v1/auth/config").json()["mode"] == "oidc"
    assert desktop.post("/api/v1/auth/login", {"username": "admin", "password": "x"}).status == 403
    assert desktop.get("/api/v1/profiles").status == 401


# --------------------------------------------------------------------------- first start


def test_first_start_values_are_stored_once(
    launcher: Launcher, installed: Installed, postgres: Postgres, desk_db: str, agent_key: t.Tuple[Proc, str]
) -> None:
    agent, key = agent_key
    first = first_start_env(agent, key, postgres, None)
    desktop = start_desktop(launcher, installed, desktop_env(postgres, desk_db, **first))
    login(desktop)
    assert desktop.stop() == 0
    profile = stored_profile(postgres, desk_db)
    expected = {
        "name": "default",
        "agent_endpoint": first["NEURONAGENT_ENDPOINT"],
        "agent_api_key": key,
        "neurondb_host": "127.0.0.1",
        "neurondb_port": postgres.port,
        "neurondb_database": AGENT_DB,
        "neurondb_user": AGENT_USER,
        "neurondb_password": AGENT_PASSWORD,
        "mcp_binary_path": None,
    }
    assert {name: profile[name] for name in expected} == expected
    with postgres.connect(desk_db) as conn:
        password_hash = conn.execute("SELECT password_hash FROM users WHERE username = 'admin'").fetchone()[0]
    assert password_hash.startswith("scrypt$")
    assert ADMIN_PASSWORD not in password_hash

    later = {**first, "ADMIN_PASSWORD": "second password", "NEURONAGENT_ENDPOINT": "http://elsewhere:1"}
    later |= {"NEURONAGENT_API_KEY": "nak_other", "NEURONDB_PORT": "1", "NEURONMCP_BINARY_PATH": "/nowhere"}
    again = start_desktop(launcher, installed, desktop_env(postgres, desk_db, **later))
    assert stored_profile(postgres, desk_db) == profile  # the stored profile wins
    login(again, ADMIN_PASSWORD)
    assert again.post("/api/v1/auth/login", {"username": "admin", "password": "second password"}).status == 401
    assert again.stop() == 0
    messages = [line["msg"] for line in again.log_lines()]
    assert "first start: wrote the default profile" not in messages
    assert "nak_other" not in again.stderr() and key not in again.stderr()


def test_temporary_admin_password_is_logged_when_unset(
    launcher: Launcher, installed: Installed, postgres: Postgres, desk_db: str
) -> None:
    desktop = start_desktop(launcher, installed, desktop_env(postgres, desk_db))
    warnings = [line for line in desktop.log_lines() if "temporary admin password" in line["msg"]]
    assert len(warnings) == 1, desktop.stderr()
    password = warnings[0]["temporary_password"]
    assert len(password) >= 12
    login(desktop, password)
    assert desktop.stop() == 0
    again = start_desktop(launcher, installed, desktop_env(postgres, desk_db))
    assert not [line for line in again.log_lines() if "temporary" in line["msg"]]
    login(again, password)


def test_two_replicas_starting_together_write_one_profile(
    launcher: Launcher, installed: Installed, postgres: Postgres, desk_db: str
) -> None:
    env = desktop_env(postgres, desk_db)
    replicas: t.List[Proc] = []
    threads = [threading.Thread(target=lambda: replicas.append(start_desktop(launcher, installed, env, wait=False)))]
    threads.append(
        threading.Thread(target=lambda: replicas.append(start_desktop(launcher, installed, env, wait=False)))
    )
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for replica in replicas:
        replica.wait_listening()
    with postgres.connect(desk_db) as conn:
        assert conn.execute("SELECT count(*) FROM profiles").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    writers = [r for r in replicas if any(line["msg"].startswith("first start") for line in r.log_lines())]
    assert len(writers) == 1
    passwords = [line["temporary_password"] for r in replicas for line in r.log_lines() if "temporary_password" in line]
    assert len(passwords) == 1  # only the password that was stored is shown
    for replica in replicas:
        login(replica, passwords[0])


# --------------------------------------------------------------------------- the running API


def test_health_metrics_and_cors(desk: Desk) -> None:
    for path in ("/health", "/api/v1/health"):
        assert desk.proc.get(path).json() == {"status": "ok"}
    metrics = desk.proc.get("/metrics").body.decode()
    assert 'neurondesktop_http_requests_total{method="GET",path="/health",status="200"}' in metrics
    assert f'neurondesktop_mcp_child_up{{profile="{desk.profile_id}"}} 1' in metrics
    assert desk.proc.port is not None
    preflight = request(
        desk.proc.port,
        "OPTIONS",
        "/api/v1/profiles",
        headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in preflight.headers["Access-Control-Allow-Methods"]


def test_cors_with_a_list_of_origins(
    launcher: Launcher, installed: Installed, postgres: Postgres, desk_db: str
) -> None:
    from support import request

    env = desktop_env(postgres, desk_db, CORS_ALLOWED_ORIGINS="https://a.example, https://b.example")
    desktop = start_desktop(launcher, installed, env)
    assert desktop.port is not None
    allowed = request(desktop.port, "GET", "/health", headers={"Origin": "https://b.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://b.example"
    other = request(desktop.port, "GET", "/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_login_token_and_cookie(desk: Desk, postgres: Postgres) -> None:
    reply = desk.proc.post("/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD})
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie  # SESSION_SECURE defaults to true
    token = reply.json()["token"]
    header, payload, _signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert json.loads(base64.urlsafe_b64decode(header + "==="))["alg"] == "HS256"
    assert claims["name"] == "admin" and claims["exp"] > claims["iat"]
    assert desk.proc.get("/api/v1/profiles", headers={"Cookie": f"neurondesktop_session={token}"}).status == 200
    forged = f"{header}.{payload}.{'A' * 43}"
    assert desk.proc.get("/api/v1/profiles", headers=bearer(forged)).status == 401
    assert desk.proc.post("/api/v1/auth/login", {"username": "admin", "password": "wrong"}).status == 401
    assert ADMIN_PASSWORD not in desk.proc.stderr()


def test_profiles_list_shows_no_secrets(desk: Desk, agent_key: t.Tuple[Proc, str]) -> None:
    reply = desk.proc.get("/api/v1/profiles", headers=bearer(desk.token))
    assert reply.status == 200
    (profile,) = reply.json()
    assert profile["agent_endpoint"] == f"http://127.0.0.1:{agent_key[0].port}"
    assert profile["mcp_binary_path"] == str(desk.wrapper.path)
    assert profile["is_default"] is True
    assert agent_key[1] not in reply.body.decode()
    assert AGENT_PASSWORD not in reply.body.decode()
    assert desk.proc.get("/api/v1/profiles").status == 401


def test_agent_health_through_the_profile(desk: Desk, postgres: Postgres) -> None:
    path = f"/api/v1/profiles/{desk.profile_id}/agent/health"
    reply = desk.proc.get(path, headers=bearer(desk.token))
    assert reply.status == 200, reply.body
    assert reply.json()["agent_status"] == 200
    with postgres.connect(desk.dbname) as conn:
        good = conn.execute("SELECT agent_api_key FROM profiles WHERE id = %s", (desk.profile_id,)).fetchone()[0]
        conn.execute("UPDATE profiles SET agent_api_key = 'nak_revoked' WHERE id = %s", (desk.profile_id,))
        try:
            refused = desk.proc.get(path, headers=bearer(desk.token))
        finally:
            conn.execute("UPDATE profiles SET agent_api_key = %s WHERE id = %s", (good, desk.profile_id))
    assert (refused.status, refused.json()["agent_status"]) == (502, 401)
    assert (
        desk.proc.get(
            "/api/v1/profiles/00000000-0000-0000-0000-000000000000/agent/health", headers=bearer(desk.token)
        ).status
        == 404
    )


def test_mcp_child_gets_the_profile_and_is_restarted(desk: Desk, postgres: Postgres) -> None:
    call = f"/api/v1/profiles/{desk.profile_id}/mcp/call"
    tools = desk.proc.post(call, {"method": "tools/list"}, headers=bearer(desk.token))
    assert tools.status == 200, tools.body
    assert [tool["name"] for tool in tools.json()["result"]["tools"]] == ["sql_ping"]
    ping = desk.proc.post(call, {"method": "tools/call", "params": {"name": "sql_ping"}}, headers=bearer(desk.token))
    assert ping.json()["result"]["isError"] is False, ping.body  # the child reached NEURONDB_* of the profile
    (pid,) = desk.wrapper.pids()
    env = desk.wrapper.env(pid)
    assert {
        name: env.get(name) for name in ("NEURONDB_HOST", "NEURONDB_PORT", "NEURONDB_DATABASE", "NEURONDB_USER")
    } == {
        "NEURONDB_HOST": "127.0.0.1",
        "NEURONDB_PORT": str(postgres.port),
        "NEURONDB_DATABASE": AGENT_DB,
        "NEURONDB_USER": AGENT_USER,
    }
    assert env["NEURONDB_PASSWORD"] == AGENT_PASSWORD
    assert not {"JWT_SECRET", "DB_PASSWORD", "ADMIN_PASSWORD", "NEURONAGENT_API_KEY"} & env.keys()
    assert any(line["msg"] == "MCP child ready" for line in desk.proc.log_lines())

    os.kill(pid, signal.SIGKILL)
    new_pids = wait_for(lambda: [p for p in desk.wrapper.pids() if p != pid], 10, "a new MCP child")
    wait_for(
        lambda: desk.proc.post(call, {"method": "ping"}, headers=bearer(desk.token)).status == 200, 10, "the new child"
    )
    assert not alive(pid)
    assert alive(new_pids[0])
    assert any(line["msg"] == "MCP child exited; restarting it" for line in desk.proc.log_lines())


def test_websockets(desk: Desk) -> None:
    assert desk.proc.port is not None
    port, auth = desk.proc.port, bearer(desk.token)
    metrics = WsClient(port, "/api/v1/system-metrics/ws", auth)
    assert metrics.status == 101
    first = metrics.recv_json()
    assert first["type"] == "system_metrics" and first["cpu_count"] >= 1
    metrics.send_text("hello")
    assert metrics.recv_json() == {"echo": "hello"}
    metrics.close()

    agent = WsClient(port, f"/api/v1/profiles/{desk.profile_id}/agent/ws?token={desk.token}")
    assert agent.status == 101
    agent.send_text('{"via": "desktop"}')
    assert agent.recv_json() == {"echo": {"via": "desktop"}}  # answered by the agent itself
    agent.close()

    mcp = WsClient(port, f"/api/v1/profiles/{desk.profile_id}/mcp/ws", auth)
    mcp.send_text(json.dumps({"jsonrpc": "2.0", "id": "a", "method": "tools/list"}))
    answer = mcp.recv_json()
    assert answer["id"] == "a" and answer["result"]["tools"][0]["name"] == "sql_ping"
    mcp.close()
    assert WsClient(port, "/api/v1/system-metrics/ws").status == 401


def test_sql_console_is_off_by_default_and_read_only(
    desk: Desk,
    launcher: Launcher,
    installed: Installed,
    postgres: Postgres,
    desk_db: str,
    agent_key: t.Tuple[Proc, str],
) -> None:
    reply = desk.proc.post(f"/api/v1/profiles/{desk.profile_id}/sql", {"query": "SELECT 1"}, headers=bearer(desk.token))
    assert reply.status == 403
    env = desktop_env(postgres, desk_db, ENABLE_SQL_CONSOLE="true", **first_start_env(*agent_key, postgres, None))
    console = start_desktop(launcher, installed, env)
    token = login(console)
    (profile,) = console.get("/api/v1/profiles", headers=bearer(token)).json()
    path = f"/api/v1/profiles/{profile['id']}/sql"
    answer = console.post(path, {"query": "SELECT current_database() AS db, 2 AS n"}, headers=bearer(token))
    assert answer.json() == {"columns": ["db", "n"], "rows": [[AGENT_DB, 2]]}  # the profile's NeuronDB
    for query in ("CREATE TABLE sql_console_probe ()", "SET TRANSACTION READ WRITE", "SELECT 1; DROP TABLE x"):
        assert console.post(path, {"query": query}, headers=bearer(token)).status == 400, query


def test_shutdown_stops_the_mcp_children(
    launcher: Launcher,
    installed: Installed,
    postgres: Postgres,
    desk_db: str,
    agent_key: t.Tuple[Proc, str],
    tmp_path: Path,
) -> None:
    wrapper = McpWrapper(tmp_path / "mcp", installed)
    env = desktop_env(postgres, desk_db, **first_start_env(*agent_key, postgres, wrapper))
    desktop = start_desktop(launcher, installed, env)
    (pid,) = wait_for(wrapper.pids, 10, "the MCP child")
    wait_for(lambda: any(line["msg"] == "MCP child ready" for line in desktop.log_lines()), 10, "the handshake")
    assert desktop.stop() == 0
    assert not alive(pid)
    assert PYTHON  # the children ran on the tests' interpreter too


def test_schema_file_is_idempotent(installed: Installed, postgres: Postgres, desk_db: str) -> None:
    import psycopg

    sql = installed.sql("/usr/share/neurondesktop/neurondesktop.sql")
    assert "CREATE EXTENSION" not in "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    with postgres.connect(desk_db, DESK_USER, DESK_PASSWORD) as conn:
        conn.execute(sql)  # the copy of the template has it already
        conn.execute("INSERT INTO profiles (name, is_default) VALUES ('a', true)")
        with pytest.raises(psycopg.errors.UniqueViolation, match="profiles_one_default"):
            conn.execute("INSERT INTO profiles (name, is_default) VALUES ('b', true)")
