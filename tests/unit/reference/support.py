# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Helpers of the reference services' tests: processes, an HTTP and a WebSocket client, and a
pooler-like proxy that drops the libpq ``options`` startup parameter.

The WebSocket client here is written independently of reference/src/neuronref/websocket.py
on purpose: the same code at both ends could hide a shared mistake.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import typing as t
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# The interpreter the packaged programs run on: this one by default, or e.g. a
# Python 3.13 with Debian's psycopg to check the deployed combination.
PYTHON = os.environ.get("NEURONDB_REFERENCE_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str, interval: float = 0.05) -> t.Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> t.Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    body: t.Any = None,
    headers: t.Optional[t.Dict[str, str]] = None,
    timeout: float = 15,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=headers)
        answer = conn.getresponse()
        return Reply(answer.status, answer.headers, answer.read())
    finally:
        conn.close()


def bearer(token: str) -> t.Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    err_path: Path
    port: t.Optional[int] = None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def log_lines(self) -> t.List[t.Dict[str, t.Any]]:
        """The JSON log lines (LOG_FORMAT=json); anything else fails the test."""
        text = self.stderr()
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError:
            raise AssertionError(f"{self.name} wrote a line that is not JSON:\n{text}") from None

    def get(self, path: str, **kwargs: t.Any) -> Reply:
        assert self.port is not None
        return request(self.port, "GET", path, **kwargs)

    def post(self, path: str, body: t.Any, **kwargs: t.Any) -> Reply:
        assert self.port is not None
        return request(self.port, "POST", path, body=body, **kwargs)

    def wait_listening(self, timeout: float = 20) -> Proc:
        assert self.port is not None

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}: {self.stderr()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(ready, timeout, f"{self.name} to listen on {self.port}")
        return self

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s: {self.stderr()}") from None

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
    """Starts programs with a clean environment; kills what is left at the end."""

    workdir: Path
    procs: t.List[Proc] = field(default_factory=list)

    def spawn(
        self,
        command: t.List[str],
        env: t.Dict[str, str],
        port: t.Optional[int] = None,
        stdin: t.Any = subprocess.DEVNULL,
        stdout: t.Any = subprocess.DEVNULL,
        name: str = "",
    ) -> Proc:
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        full.update(env)
        err_path = self.workdir / f"{name or Path(command[-1]).name}-{uuid.uuid4().hex[:8]}.err"
        with err_path.open("wb") as err:
            proc = subprocess.Popen(command, env=full, stdin=stdin, stdout=stdout, stderr=err)
        started = Proc(name or Path(command[-1]).name, proc, err_path, port)
        self.procs.append(started)
        return started

    def close(self) -> None:
        for started in self.procs:
            if started.proc.poll() is None:
                started.proc.kill()
                started.proc.wait()


def run(
    command: t.List[str], env: t.Dict[str, str], stdin: str = "", timeout: float = 20
) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    full.update(env)
    return subprocess.run(command, env=full, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


# --------------------------------------------------------------------------- WebSocket client


class WsClient:
    """A minimal RFC 6455 client: masked frames out, unmasked frames in."""

    GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port: int, path: str, headers: t.Optional[t.Dict[str, str]] = None, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: keep-alive, Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _sep, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _sep, v in (h.partition(":") for h in header_lines)}
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1(key + self.GUID).digest()).decode()
            assert self.headers.get("sec-websocket-accept") == expected

    def _recv_exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        head = bytes([(0x80 if fin else 0) | opcode])
        length = len(payload)
        bit = 0x80 if mask else 0
        if length < 126:
            head += bytes([bit | length])
        elif length < 65536:
            head += bytes([bit | 126]) + struct.pack("!H", length)
        else:
            head += bytes([bit | 127]) + struct.pack("!Q", length)
        if mask:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + payload)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def recv_frame(self) -> t.Tuple[int, bytes]:
        first, second = self._recv_exact(2)
        assert not second & 0x80, "server frames must not be masked"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._recv_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._recv_exact(8))
        return first & 0x0F, self._recv_exact(length)

    def recv_json(self) -> t.Any:
        opcode, payload = self.recv_frame()
        assert opcode == 0x1, (opcode, payload)
        return json.loads(payload)

    def close(self) -> t.Tuple[int, bytes]:
        self.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        answer = self.recv_frame()
        self.sock.close()
        return answer


# --------------------------------------------------------------------------- a pooler that drops options


class OptionDroppingProxy:
    """Forwards PostgreSQL connections, removing the "options" startup parameter.

    It stands for a pooler (PgBouncer with ignore_startup_parameters = options)
    that loses the client's search_path: only the role's settings then apply.
    """

    SSL_REQUEST, GSS_REQUEST = 80877103, 80877104

    def __init__(self, upstream_port: int, drop_options: bool = True) -> None:
        self.upstream_port = upstream_port
        self.drop_options = drop_options
        self.sockets: t.List[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.dropped: t.List[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _read_packet(self, sock: socket.socket) -> bytes:
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                raise ConnectionError
            head += chunk
        (length,) = struct.unpack("!I", head)
        body = b""
        while len(body) < length - 4:
            chunk = sock.recv(length - 4 - len(body))
            if not chunk:
                raise ConnectionError
            body += chunk
        return head + body

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            packet = self._read_packet(client)
            while struct.unpack("!I", packet[4:8])[0] in (self.SSL_REQUEST, self.GSS_REQUEST):
                client.sendall(b"N")
                packet = self._read_packet(client)
            code = struct.unpack("!I", packet[4:8])[0]
            if code >> 16 == 3 and self.drop_options:  # a protocol 3 StartupMessage: drop "options"
                fields = packet[8:].split(b"\0")
                pairs = [(fields[i], fields[i + 1]) for i in range(0, len(fields) - 2, 2) if fields[i]]
                kept = [(k, v) for k, v in pairs if k != b"options"]
                self.dropped += [v.decode() for k, v in pairs if k == b"options"]
                body = struct.pack("!I", code) + b"".join(k + b"\0" + v + b"\0" for k, v in kept) + b"\0"
                packet = struct.pack("!I", len(body) + 4) + body
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            upstream.sendall(packet)
        except (OSError, ConnectionError):
            client.close()
            return

        def pump(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def close(self) -> None:
        """Like a database going away: refuse new connections, cut the open ones."""
        # close() alone leaves a listener that a thread is blocked in accept() on alive (Linux).
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
