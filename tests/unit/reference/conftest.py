# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Fixtures of the reference services' tests.

The programs under test are the packaged ones: reference/build.py builds the
.debs and the frontend tarball, and the tests unpack them into a throw-away root
and run /usr/bin/* from there, as dpkg would lay them out. The database is a
throw-away PostgreSQL cluster made with initdb (as the postgres user when the
tests run as root); those tests skip only when no initdb exists on the machine.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import typing as t
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Launcher, free_port, wait_for

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "reference" / "build.py"
SUPERUSER_PASSWORD = "super-secret-test"
AGENT_USER, AGENT_PASSWORD, AGENT_DB = "neurondb", "agent pass 'q'", "neurondb"
DESK_USER, DESK_PASSWORD = "neurondesk", "desk-pass"

# Where no pgvector is installed (Debian 12 has none), a superuser-made type named
# "vector" with a type modifier stands in for it: the agent's schema only needs the
# type to exist. The text input/output functions make it hold '[1,2,3]' verbatim.
VECTOR_STAND_IN = """
CREATE TYPE vector;
CREATE FUNCTION vector_in(cstring) RETURNS vector LANGUAGE internal IMMUTABLE STRICT AS 'textin';
CREATE FUNCTION vector_out(vector) RETURNS cstring LANGUAGE internal IMMUTABLE STRICT AS 'textout';
CREATE FUNCTION vector_typmod_in(cstring[]) RETURNS integer LANGUAGE internal IMMUTABLE STRICT AS 'varchartypmodin';
CREATE TYPE vector (INPUT = vector_in, OUTPUT = vector_out, TYPMOD_IN = vector_typmod_in,
                    INTERNALLENGTH = VARIABLE, STORAGE = extended);
"""


# --------------------------------------------------------------------------- packages


def ar_members(data: bytes) -> t.Dict[str, bytes]:
    assert data[:8] == b"!<arch>\n", "not an ar archive"
    members, offset = {}, 8
    while offset < len(data):
        header = data[offset : offset + 60]
        assert header[58:60] == b"`\n", f"bad ar header at {offset}"
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        members[name] = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
    return members


def tar_entries(data: bytes) -> t.Dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {member.name: member for member in archive.getmembers()}


@dataclass
class Installed:
    root: Path
    artifacts: t.Dict[str, t.Dict[str, str]]

    def bin(self, name: str) -> t.List[str]:
        """The command running a packaged program with the tests' interpreter."""
        from support import PYTHON

        return [PYTHON, str(self.root / "usr" / "bin" / name)]

    def sql(self, path: str) -> str:
        return (self.root / path.lstrip("/")).read_text()


def build_artifacts(out: Path, *extra: str) -> t.Dict[str, t.Dict[str, str]]:
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), *extra], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def installed() -> t.Iterator[Installed]:
    base = Path(tempfile.mkdtemp(prefix="neurondb-ref-pkg-"))
    artifacts = build_artifacts(base / "out")
    root = base / "root"
    for name in ("neuronagent", "neurondesktop", "neuronmcp"):
        data = ar_members(Path(artifacts[name]["path"]).read_bytes())["data.tar.gz"]
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            archive.extractall(root, filter="tar")
    frontend = root / "opt" / "neurondesktop-frontend"
    with tarfile.open(artifacts["neurondesktop-frontend"]["path"], mode="r:gz") as archive:
        archive.extractall(frontend, filter="tar")
    # The unpacked tree must be readable by the PostgreSQL owner too (COPY-free, but mkdtemp is 0700).
    os.chmod(base, 0o755)
    yield Installed(root, artifacts)
    shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- PostgreSQL


def find_pg_bindir() -> t.Optional[Path]:
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda path: int(Path(path).parts[4]) if Path(path).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


def as_owner(command: t.List[str], owner: t.Optional[str]) -> t.List[str]:
    """PostgreSQL and PgBouncer refuse to run as root: run them as owner then."""
    if owner is None:
        return command
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", owner, "--", *command]
    return ["su", "-s", "/bin/sh", owner, "-c", shlex.join(command)]


def cluster_owner() -> t.Optional[str]:
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


@dataclass
class Postgres:
    port: int
    base: Path
    owner: t.Optional[str]
    host: str = "127.0.0.1"

    def connect(self, dbname: str = "postgres", user: str = "postgres", password: str = SUPERUSER_PASSWORD) -> t.Any:
        import psycopg

        return psycopg.connect(
            host=self.host, port=self.port, dbname=dbname, user=user, password=password, autocommit=True
        )

    def create_database(self, name: str, owner: str, template: str = "template0") -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{owner}" TEMPLATE "{template}"')
        return name

    def agent_env(self, port: t.Optional[int] = None, dbname: str = AGENT_DB) -> t.Dict[str, str]:
        return {
            "DB_HOST": self.host,
            "DB_PORT": str(port or self.port),
            "DB_NAME": dbname,
            "DB_USER": AGENT_USER,
            "DB_PASSWORD": AGENT_PASSWORD,
        }


def _install_extensions(cluster: Postgres, dbname: str) -> None:
    """What the schema step's superuser does first: uuid-ossp, pgcrypto and a vector type."""
    with cluster.connect(dbname) as conn:
        conn.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        else:
            conn.execute(VECTOR_STAND_IN)


@pytest.fixture(scope="session")
def postgres() -> t.Iterator[Postgres]:
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.skip("no initdb in /usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    owner = cluster_owner()
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
    done = subprocess.run(as_owner(initdb, owner), capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base}"
    options += " -c fsync=off -c full_page_writes=off -c max_connections=200"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-w", "-t", "30", "-o", options]
    done = subprocess.run(as_owner([*pg_ctl, "start"], owner), capture_output=True, text=True, check=False)
    try:
        assert done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}{logfile.read_text()}"
        cluster = Postgres(port, base, owner)
        with cluster.connect() as conn:
            for user, password in ((AGENT_USER, AGENT_PASSWORD), (DESK_USER, DESK_PASSWORD)):
                quoted = password.replace("'", "''")
                conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{quoted}'")
        yield cluster
    finally:
        subprocess.run(as_owner([*pg_ctl, "-m", "immediate", "stop"], owner), capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def agent_db(postgres: Postgres, installed: Installed) -> str:
    """Database neurondb: extensions by the superuser, then neuron-agent.sql by its owner."""
    postgres.create_database(AGENT_DB, AGENT_USER)
    _install_extensions(postgres, AGENT_DB)
    with postgres.connect(AGENT_DB, AGENT_USER, AGENT_PASSWORD) as conn:
        conn.execute(installed.sql("/usr/share/neuronagent/sql/neuron-agent.sql"))
    return AGENT_DB


@pytest.fixture(scope="session")
def desk_template(postgres: Postgres, installed: Installed) -> str:
    """A template database holding neurondesktop.sql: each test gets a fresh copy."""
    name = postgres.create_database("neurondesk_template", DESK_USER)
    _install_extensions(postgres, name)
    with postgres.connect(name, DESK_USER, DESK_PASSWORD) as conn:
        conn.execute(installed.sql("/usr/share/neurondesktop/neurondesktop.sql"))
    return name


@pytest.fixture
def desk_db(postgres: Postgres, desk_template: str) -> str:
    return postgres.create_database(f"desk_{uuid.uuid4().hex[:10]}", DESK_USER, desk_template)


@pytest.fixture(scope="session")
def launcher() -> t.Iterator[Launcher]:
    workdir = Path(tempfile.mkdtemp(prefix="neurondb-ref-run-"))
    started = Launcher(workdir)
    yield started
    started.close()
    shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- PgBouncer


@dataclass
class PgBouncer:
    port: int


@pytest.fixture(scope="session")
def pgbouncer(postgres: Postgres, agent_db: str) -> t.Iterator[PgBouncer]:
    """PgBouncer in front of the agent's database: neurondb_tx (transaction pool), neurondb_session."""
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if binary is None:
        pytest.skip("no pgbouncer (apt-get install pgbouncer)")
    base = Path(tempfile.mkdtemp(prefix="neurondb-ref-pgb-"))
    port = free_port()
    target = f"host=127.0.0.1 port={postgres.port} dbname={agent_db}"
    password = AGENT_PASSWORD.replace('"', '""')
    (base / "userlist.txt").write_text(f'"{AGENT_USER}" "{password}"\n')
    (base / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"neurondb_tx = {target} pool_mode=transaction\n"
        f"neurondb_session = {target} pool_mode=session\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = scram-sha-256\nauth_file = {base / 'userlist.txt'}\n"
        "default_pool_size = 4\nmax_client_conn = 100\n"
        # What a pooler commonly does with libpq's options: accept and drop them.
        "ignore_startup_parameters = extra_float_digits, options\n"
        f"logfile = {base / 'pgbouncer.log'}\n"
    )
    owner = postgres.owner
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (base, base / "userlist.txt", base / "pgbouncer.ini"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    # Started directly as owner (PgBouncer refuses root), so that terminate() reaches it.
    proc = subprocess.Popen([binary, str(base / "pgbouncer.ini")], stderr=subprocess.PIPE, user=owner, group=owner)
    try:

        def up() -> bool:
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 10, "pgbouncer to listen")
        yield PgBouncer(port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
