# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Small local stand-ins for what the switchover follower talks to.

* FakeHAProxy: HAProxy's runtime API on a Unix socket (one command per
  connection, answer, close), with `show servers state <backend>` in HAProxy's
  own format (version line, `#` header, one line per server) and
  `set server <backend>/<server> health up|down`.
* FakePatroni: one member's REST API over TLS on 127.0.0.1, GET /primary
  answering 200 or 503 with the member's role and state, as Patroni does.
* FakePgBouncer: PgBouncer's admin console on 127.0.0.1, speaking the parts
  of the PostgreSQL v3 protocol that libpq uses for it: SSLRequest refused,
  a cleartext password, simple queries SHOW STATE, PAUSE and RESUME, with
  PgBouncer's own error texts.
* make_pki: a CA and a certificate for 127.0.0.1, so that the follower
  verifies Patroni as it does on the hosts.

load_follower() imports the program under test from the role's files.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import ipaddress
import json
import os
import socket
import ssl
import struct
import sys
import threading
import time
import typing as t
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FOLLOWER = Path(__file__).resolve().parents[3] / "roles" / "switchover" / "files" / "neurondb_switchover_follower.py"

# The header HAProxy 2.x/3.x prints before the server lines (format version 1).
SERVERS_STATE_HEADER = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    "srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port "
    "srv_check_addr srv_agent_addr srv_agent_port\n"
)
SRV_STOPPED, SRV_RUNNING = 0, 2


def load_follower() -> t.Any:
    """roles/switchover/files/neurondb_switchover_follower.py as a module (it is a program, not a package)."""
    spec = importlib.util.spec_from_file_location("neurondb_switchover_follower", FOLLOWER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_pki(directory: str) -> t.Tuple[str, str, str]:
    """A CA and a server certificate for IP 127.0.0.1 it signed: (ca, cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switchover test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(directory, name) for name in ("ca.crt", "server.crt", "server.key"))
    with open(paths[0], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return paths[0], paths[1], paths[2]


# --------------------------------------------------------------------------- HAProxy


class FakeHAProxy:
    """HAProxy's runtime API socket with one backend of Patroni members."""

    def __init__(self, path: str, servers: t.Dict[str, int], backend: str = "postgres_primary") -> None:
        self.path = path
        self.backend = backend
        self.lock = threading.Lock()
        # server -> [srv_op_state, srv_admin_state]
        self.servers = {name: [op, 0] for name, op in servers.items()}
        self.commands: t.List[t.Tuple[float, str]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def set(self, name: str, op: int, admin: int = 0) -> None:
        with self.lock:
            self.servers[name] = [op, admin]

    def sets(self) -> t.List[str]:
        """The `set server` commands received, in order."""
        return [c for _at, c in self.commands if c.startswith("set server")]

    def state_text(self, backend: str) -> str:
        # Columns after the admin state as a healthy server shows them.
        rest = "1 1 12 6 3 4 6 0 0 0 - 5432 - 0 8008 - - 0"
        with self.lock:
            lines = [
                f"3 {backend} {i} {name} 10.0.0.{i} {op} {admin} {rest}"
                for i, (name, (op, admin)) in enumerate(sorted(self.servers.items()), start=1)
            ]
        return SERVERS_STATE_HEADER + "".join(line + "\n" for line in lines) + "\n"

    def answer(self, command: str) -> str:
        words = command.split()
        if words[:3] == ["show", "servers", "state"] and len(words) == 4:
            if words[3] != self.backend:
                return f"Can't find backend '{words[3]}'.\n"
            return self.state_text(words[3])
        if len(words) == 5 and words[:2] == ["set", "server"] and words[3] == "health":
            backend, _slash, name = words[2].partition("/")
            with self.lock:
                if backend != self.backend or name not in self.servers:
                    return "No such server.\n"
                self.servers[name][0] = SRV_RUNNING if words[4] == "up" else SRV_STOPPED
            return "\n"
        return "Unknown command: '" + command + "'\n"

    def _serve(self) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                command = data.decode().strip()
                self.commands.append((time.time(), command))
                conn.sendall(self.answer(command).encode())

    def close(self) -> None:
        # shutdown() first: close() alone leaves a socket that another thread
        # waits on in accept() listening.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


# --------------------------------------------------------------------------- Patroni


class FakePatroni:
    """GET /primary of one Patroni member, over TLS.

    Patroni answers 200 as soon as the member holds the leader lock, and
    reports PostgreSQL's role: still ``replica`` until the promotion ends.
    """

    def __init__(self, cert: str, key: str, role: str = "replica", state: str = "running") -> None:
        self.role = role
        self.state = state
        self.leader_lock = role == "primary"
        self.calls: t.List[float] = []
        member = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
                pass

            def do_GET(self) -> None:  # pylint: disable=invalid-name
                member.calls.append(time.time())
                if self.path != "/primary":
                    self.send_error(404)
                    return
                body = json.dumps({"state": member.state, "role": member.role, "patroni": {"version": "4.0.7"}})
                self.send_response(200 if member.leader_lock else 503)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def take_lock(self) -> None:
        """Leader lock held, PostgreSQL still in recovery: the moment before promotion ends."""
        self.leader_lock, self.role, self.state = True, "replica", "running"

    def promote(self) -> None:
        self.leader_lock, self.role, self.state = True, "primary", "running"

    def demote(self) -> None:
        self.leader_lock, self.role, self.state = False, "replica", "running"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- PgBouncer

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST, PROTOCOL_3 = 80877103, 80877104, 80877102, 196608


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def _message(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def _error(message: str, severity: str = "ERROR", code: str = "08P01") -> bytes:
    fields = b"".join(k + v.encode() + b"\0" for k, v in ((b"S", severity), (b"V", severity), (b"C", code)))
    return _message(b"E", fields + b"M" + message.encode() + b"\0\0")


def _ready() -> bytes:
    return _message(b"Z", b"I")


class FakePgBouncer:
    """PgBouncer's admin console (database pgbouncer) on 127.0.0.1."""

    def __init__(self, user: str = "pgbouncer_admin", password: str = "admin-secret") -> None:
        self.user = user
        self.password = password
        self.paused = False
        self.suspended = False
        # Knobs: an error text RESUME answers with; SHOW STATE raising instead.
        self.resume_error: str | None = None
        self.queries: t.List[t.Tuple[float, str]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: t.List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def conninfo(self, passfile: str) -> str:
        """What the switchover role hands the follower (--pgbouncer)."""
        return (
            f"host=127.0.0.1 port={self.port} dbname=pgbouncer user={self.user} connect_timeout=5 passfile={passfile}"
        )

    def write_passfile(self, path: str) -> str:
        """The password file as the role writes it."""
        with open(path, "w") as f:
            f.write(f"*:*:pgbouncer:{self.user}:{self.password}\n")
        os.chmod(path, 0o600)
        return path

    def commands(self, name: str) -> t.List[float]:
        return [at for at, q in self.queries if q.upper() == name]

    def _accept(self) -> None:
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                if self._startup(conn):
                    self._queries(conn)
        except (ConnectionError, OSError):
            pass

    def _startup(self, conn: socket.socket) -> bool:
        while True:
            length, code = struct.unpack("!ii", _recv_exact(conn, 8))
            if code in (SSL_REQUEST, GSSENC_REQUEST):
                conn.sendall(b"N")  # no TLS: the console listens on loopback
                continue
            body = _recv_exact(conn, length - 8)
            if code != PROTOCOL_3:
                return False
            break
        words = body.split(b"\0")
        params = {words[i].decode(): words[i + 1].decode() for i in range(0, len(words) - 1, 2) if words[i]}
        conn.sendall(_message(b"R", struct.pack("!i", 3)))  # AuthenticationCleartextPassword
        tag = _recv_exact(conn, 1)
        (length,) = struct.unpack("!i", _recv_exact(conn, 4))
        password = _recv_exact(conn, length - 4).rstrip(b"\0").decode()
        if tag != b"p" or password != self.password or params.get("user") != self.user:
            conn.sendall(_error(f'password authentication failed for user "{params.get("user")}"', "FATAL", "28P01"))
            return False
        if params.get("database") != "pgbouncer":
            conn.sendall(_error(f"no such database: {params.get('database')}", "FATAL", "08P01"))
            return False
        out = _message(b"R", struct.pack("!i", 0))
        for key, value in (
            ("server_version", "1.24.1/bouncer"),
            ("client_encoding", "UTF8"),
            ("server_encoding", "UTF8"),
            ("standard_conforming_strings", "on"),
            ("DateStyle", "ISO"),
            ("integer_datetimes", "on"),
            ("TimeZone", "UTC"),
        ):
            out += _message(b"S", key.encode() + b"\0" + value.encode() + b"\0")
        out += _message(b"K", struct.pack("!ii", 4242, 1234)) + _ready()
        conn.sendall(out)
        return True

    def _queries(self, conn: socket.socket) -> None:
        while True:
            tag = _recv_exact(conn, 1)
            (length,) = struct.unpack("!i", _recv_exact(conn, 4))
            body = _recv_exact(conn, length - 4)
            if tag == b"X":
                return
            if tag != b"Q":
                conn.sendall(_error("unsupported pkt type: " + tag.decode(errors="replace")) + _ready())
                continue
            query = body.rstrip(b"\0").decode().strip().rstrip(";").strip()
            self.queries.append((time.time(), query))
            conn.sendall(self.answer(query) + _ready())

    def answer(self, query: str) -> bytes:
        command = query.upper()
        if command == "SHOW STATE":
            rows = [
                ("active", not (self.paused or self.suspended)),
                ("paused", self.paused),
                ("suspended", self.suspended),
            ]
            description = struct.pack("!h", 2) + b"".join(
                name + b"\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0) for name in (b"key", b"value")
            )
            data = b"".join(
                _message(
                    b"D",
                    struct.pack("!h", 2)
                    + b"".join(struct.pack("!i", len(v)) + v for v in (k.encode(), b"yes" if on else b"no")),
                )
                for k, on in rows
            )
            return _message(b"T", description) + data + _message(b"C", b"SHOW\0")
        if command == "PAUSE":
            if self.paused:
                return _error("already suspended/paused")
            self.paused = True
            return _message(b"C", b"PAUSE\0")
        if command == "RESUME":
            if self.resume_error:
                return _error(self.resume_error)
            if not (self.paused or self.suspended):
                return _error("pooler is not paused/suspended")
            self.paused = self.suspended = False
            return _message(b"C", b"RESUME\0")
        return _error(f"invalid command '{query}', use SHOW HELP;")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # see FakeHAProxy.close
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()
