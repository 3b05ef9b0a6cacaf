# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""neuronagent, as packaged: what a deployment of the agent relies on, and how a wrong one fails."""

from __future__ import annotations

import hashlib
import re
import struct
import time
import typing as t

import pytest
from conftest import AGENT_DB, AGENT_PASSWORD, AGENT_USER, Installed, PgBouncer, Postgres
from support import Launcher, OptionDroppingProxy, Proc, WsClient, bearer, free_port, run, wait_for

KEY_RE = re.compile(r"nak_[A-Za-z0-9_-]{43}")


def start_agent(
    launcher: Launcher, installed: Installed, env: t.Dict[str, str], wait: bool = True, args: t.Sequence[str] = ()
) -> Proc:
    port = free_port()
    full = {"SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(port), "LOG_FORMAT": "json", **env}
    proc = launcher.spawn([*installed.bin("neuronagent"), *args], full, port=port, name="neuronagent")
    return proc.wait_listening() if wait else proc


def generate_key(installed: Installed, env: t.Dict[str, str], name: str = "test") -> t.Any:
    return run([*installed.bin("neuronagent"), "generate-key", "--name", name], {"LOG_FORMAT": "json", **env})


@pytest.fixture(scope="module")
def agent(launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str) -> Proc:
    return start_agent(launcher, installed, postgres.agent_env())


@pytest.fixture(scope="module")
def api_key(installed: Installed, postgres: Postgres, agent_db: str) -> str:
    done = generate_key(installed, postgres.agent_env())
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_generate_key_prints_only_the_key_and_stores_its_hash(
    installed: Installed, postgres: Postgres, agent_db: str, agent: Proc
) -> None:
    done = generate_key(installed, postgres.agent_env(), name="ci key")
    assert done.returncode == 0, done.stderr
    assert KEY_RE.fullmatch(done.stdout.rstrip("\n")), repr(done.stdout)  # the key alone, one line
    key = done.stdout.strip()
    assert key not in done.stderr
    with postgres.connect(AGENT_DB) as conn:
        rows = conn.execute("SELECT name, key_hash, key_prefix FROM neurondb_agent.api_keys").fetchall()
    assert ("ci key", hashlib.sha256(key.encode()).hexdigest(), key[:12]) in rows
    assert all(key not in " ".join(row) for row in rows), "the key itself must not be stored"
    assert agent.get("/api/v1/agents", headers=bearer(key)).status == 200
    assert agent.get("/api/v1/agents", headers=bearer(key[:-1] + ("A" if key[-1] != "A" else "B"))).status == 401
    assert agent.get("/api/v1/agents").status == 401
    assert agent.get("/api/v1/agents", headers={"Authorization": f"Basic {key}"}).status == 401


def test_health_and_metrics_without_auth(agent: Proc) -> None:
    health = agent.get("/health")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    agent.get("/api/v1/agents")  # a 401, counted under its route template
    metrics = agent.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()
    assert re.search(r'^neuronagent_http_requests_total\{method="GET",path="/health",status="200"\} [1-9]', text, re.M)
    assert 'path="/api/v1/agents",status="401"' in text
    assert 'neuronagent_http_request_duration_seconds_count{method="GET",path="/health"}' in text


def test_agents_create_and_list(agent: Proc, api_key: str, postgres: Postgres) -> None:
    name = f"agent-{time.monotonic_ns()}"
    created = agent.post(
        "/api/v1/agents", {"name": name, "description": "d", "embedding": [1, 2.5, -3]}, headers=bearer(api_key)
    )
    assert created.status == 201, created.body
    document = created.json()
    assert document["name"] == name
    assert document["embedding"] == [1.0, 2.5, -3.0]
    listed = agent.get("/api/v1/agents", headers=bearer(api_key)).json()
    assert document["id"] in [row["id"] for row in listed]
    with postgres.connect(AGENT_DB) as conn:
        assert conn.execute("SELECT count(*) FROM neurondb_agent.agents WHERE name = %s", (name,)).fetchone()[0] == 1
    assert agent.post("/api/v1/agents", {"name": name}, headers=bearer(api_key)).status == 409
    assert agent.post("/api/v1/agents", {"name": "x", "embedding": [1, 2]}, headers=bearer(api_key)).status == 400
    assert agent.post("/api/v1/agents", {"name": ""}, headers=bearer(api_key)).status == 400
    assert agent.post("/api/v1/agents", {"name": "y"}).status == 401


def test_schema_file_is_idempotent_and_creates_no_extension(
    installed: Installed, postgres: Postgres, agent_db: str
) -> None:
    sql = installed.sql("/usr/share/neuronagent/sql/neuron-agent.sql")
    assert "CREATE EXTENSION" not in "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    with postgres.connect(AGENT_DB, AGENT_USER, AGENT_PASSWORD) as conn:
        conn.execute(sql)  # applied already by the fixture: a second time changes nothing
        columns = conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns"
            " WHERE table_schema = 'neurondb_agent' AND table_name = 'agents' ORDER BY ordinal_position"
        ).fetchall()
    assert ("embedding", "vector") in columns


def test_schema_needs_the_extensions(installed: Installed, postgres: Postgres) -> None:
    """Without uuid-ossp and a vector type, made beforehand by a superuser, the file fails."""
    import psycopg

    name = postgres.create_database(f"bare_{time.monotonic_ns()}", AGENT_USER)
    with postgres.connect(name, AGENT_USER, AGENT_PASSWORD) as conn, pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute(installed.sql("/usr/share/neuronagent/sql/neuron-agent.sql"))


def test_dropped_search_path_fails_until_the_role_sets_it(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str, api_key: str
) -> None:
    proxy = OptionDroppingProxy(postgres.port)
    env = postgres.agent_env(port=proxy.port)
    try:
        pooled = start_agent(launcher, installed, env)
        # The agent asked for the search_path at connection start; the "pooler" dropped it.
        assert "-c search_path=neurondb_agent,public" in proxy.dropped
        reply = pooled.get("/api/v1/agents", headers=bearer(api_key))
        assert reply.status == 500
        assert 'relation "api_keys" does not exist' in reply.json()["error"]
        assert pooled.get("/health").status == 200  # SELECT 1 needs no table: health hides it
        errors = [line["msg"] for line in pooled.log_lines() if line["level"] == "error"]
        assert any("do not resolve to schema neurondb_agent" in message for message in errors), errors
        refused = generate_key(installed, env)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert 'relation \\"api_keys\\" does not exist' in refused.stderr or 'relation "api_keys"' in refused.stderr

        with postgres.connect() as conn:
            conn.execute(f"ALTER ROLE {AGENT_USER} IN DATABASE {AGENT_DB} SET search_path = neurondb_agent, public")
        try:
            fixed = start_agent(launcher, installed, env)
            assert fixed.get("/api/v1/agents", headers=bearer(api_key)).status == 200
            assert not [line for line in fixed.log_lines() if line["level"] == "error"]
            made = generate_key(installed, env)
            assert made.returncode == 0, made.stderr
            assert fixed.get("/api/v1/agents", headers=bearer(made.stdout.strip())).status == 200
        finally:
            with postgres.connect() as conn:
                conn.execute(f"ALTER ROLE {AGENT_USER} IN DATABASE {AGENT_DB} RESET search_path")
    finally:
        proxy.close()


def test_pgbouncer_drops_the_search_path_too(
    launcher: Launcher, installed: Installed, postgres: Postgres, pgbouncer: PgBouncer, api_key: str
) -> None:
    env = postgres.agent_env(port=pgbouncer.port, dbname="neurondb_session")
    pooled = start_agent(launcher, installed, env)
    reply = pooled.get("/api/v1/agents", headers=bearer(api_key))
    assert reply.status == 500
    assert "api_keys" in reply.json()["error"]


def test_health_503_with_empty_body_when_the_database_goes(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str
) -> None:
    proxy = OptionDroppingProxy(postgres.port, drop_options=False)
    agent = start_agent(launcher, installed, postgres.agent_env(port=proxy.port))
    assert agent.get("/health").status == 200
    proxy.close()
    started = time.monotonic()
    reply = agent.get("/health")
    assert (reply.status, reply.body) == (503, b"")
    assert "Content-Type" not in reply.headers
    assert time.monotonic() - started < 5


def test_exits_1_when_the_database_cannot_be_reached(launcher: Launcher, installed: Installed) -> None:
    env = {"DB_HOST": "127.0.0.1", "DB_PORT": str(free_port()), "DB_PASSWORD": "not-logged-secret"}
    agent = start_agent(launcher, installed, env, wait=False)
    assert agent.wait_exit() == 1
    lines = agent.log_lines()
    assert any(line["msg"] == "cannot reach the database" for line in lines)
    assert "not-logged-secret" not in agent.stderr()


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"SERVER_PORT": "http"}, "SERVER_PORT"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"DB_MAX_OPEN_CONNS": "0"}, "DB_MAX_OPEN_CONNS"),
        ({"EVENTS_ENABLED": "maybe"}, "EVENTS_ENABLED"),
        ({"DB_CONN_MAX_LIFETIME": "forever"}, "DB_CONN_MAX_LIFETIME"),
    ],
)
def test_configuration_errors_exit_1(installed: Installed, env: t.Dict[str, str], culprit: str) -> None:
    done = run(installed.bin("neuronagent"), env)
    assert done.returncode == 1
    assert culprit in done.stderr


def test_config_file_under_the_environment(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str, tmp_path: t.Any
) -> None:
    file_port, env_port = free_port(), free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"server:\n  host: 127.0.0.1\n  port: {file_port}\nlogging:\n  format: console  # comment\n")
    env = {**postgres.agent_env(), "SERVER_HOST": "", "SERVER_PORT": "", "LOG_FORMAT": ""}
    from_file = launcher.spawn([*installed.bin("neuronagent"), "-c", str(config)], env, port=file_port).wait_listening()
    assert from_file.get("/health").status == 200
    assert "INFO  neuronagent: listening" in from_file.stderr()  # console format, from the file
    overridden = launcher.spawn(
        [*installed.bin("neuronagent"), "-c", str(config)], {**env, "SERVER_PORT": str(env_port)}, port=env_port
    ).wait_listening()
    assert overridden.get("/health").status == 200
    config.write_text("server:\n  prot: 1\n")
    done = run([*installed.bin("neuronagent"), "-c", str(config)], env)
    assert done.returncode == 1
    assert "server.prot" in done.stderr


def test_websocket_on_both_paths(agent: Proc, api_key: str) -> None:
    assert agent.port is not None
    for path, headers in (("/api/v1/ws", bearer(api_key)), (f"/ws?api_key={api_key}", {})):
        ws = WsClient(agent.port, path, headers)
        assert ws.status == 101, path
        ws.send_text('{"hello": "agent"}')
        assert ws.recv_json() == {"echo": {"hello": "agent"}}
        ws.send_text("plain")
        assert ws.recv_json() == {"echo": "plain"}
        # A fragmented message, reassembled.
        ws.send_frame(0x1, b"frag", fin=False)
        ws.send_frame(0x0, b"mented", fin=True)
        assert ws.recv_json() == {"echo": "fragmented"}
        ws.send_frame(0x9, b"are you there")
        assert ws.recv_frame() == (0xA, b"are you there")
        opcode, payload = ws.close()
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 1000
    assert f"api_key={api_key}" not in agent.stderr()  # the query is not logged
    assert WsClient(agent.port, "/ws").status == 401
    assert WsClient(agent.port, "/ws", bearer("nak_wrong")).status == 401


def test_websocket_refuses_unmasked_client_frames(agent: Proc, api_key: str) -> None:
    assert agent.port is not None
    ws = WsClient(agent.port, "/api/v1/ws", bearer(api_key))
    ws.send_frame(0x1, b"not masked", mask=False)
    opcode, payload = ws.recv_frame()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2])[0] == 1002


def test_events_and_distributed_on_a_direct_session(
    launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str, api_key: str
) -> None:
    env = {**postgres.agent_env(), "EVENTS_ENABLED": "true", "DISTRIBUTED_ENABLED": "true"}
    first = start_agent(launcher, installed, env)
    second = start_agent(launcher, installed, env)
    ready = [line for line in first.log_lines() if line["msg"] == "events session ready"]
    assert ready and ready[0]["leader"] is True
    assert [line["leader"] for line in second.log_lines() if line["msg"] == "events session ready"] == [False]
    name = f"evented-{time.monotonic_ns()}"
    assert first.post("/api/v1/agents", {"name": name}, headers=bearer(api_key)).status == 201

    def heard(proc: Proc) -> bool:
        return any(line.get("event", {}).get("name") == name for line in proc.log_lines() if line["msg"] == "event")

    wait_for(lambda: heard(first) and heard(second), 5, "the agent.created event on both agents")
    # The leader goes: the other takes the lock at its next check.
    assert first.stop() == 0
    wait_for(
        lambda: any("this agent leads" in line["msg"] for line in second.log_lines()), 10, "the second agent to lead"
    )
    assert second.proc.poll() is None


def test_events_fail_visibly_behind_a_transaction_pool(
    launcher: Launcher, installed: Installed, postgres: Postgres, pgbouncer: PgBouncer
) -> None:
    env = {**postgres.agent_env(port=pgbouncer.port, dbname="neurondb_tx"), "EVENTS_ENABLED": "true"}
    agent = start_agent(launcher, installed, env, wait=False)
    assert agent.wait_exit(15) == 1
    errors = [line["msg"] for line in agent.log_lines() if line["level"] == "error"]
    assert any("transaction pool" in message for message in errors), errors


def test_sigterm_stops_cleanly(launcher: Launcher, installed: Installed, postgres: Postgres, agent_db: str) -> None:
    agent = start_agent(launcher, installed, postgres.agent_env())
    assert agent.stop() == 0
    assert agent.log_lines()[-1]["msg"] == "stopped"
    assert AGENT_PASSWORD not in agent.stderr()
