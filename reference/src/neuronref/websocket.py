"""WebSocket (RFC 6455) over the standard library: the server side of an upgraded request and a client.

Only what the services need: text and binary messages (fragmented or not), ping and
pong, the closing handshake, and the checks a server must make (client frames
masked, control frames short and unfragmented, text valid UTF-8).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
import urllib.parse
from collections.abc import Mapping
from typing import BinaryIO

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR = 1000, 1001, 1002
CLOSE_INVALID_DATA, CLOSE_TOO_BIG, CLOSE_INTERNAL_ERROR = 1007, 1009, 1011
MAX_MESSAGE_BYTES = 1 << 20


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class HandshakeError(Exception):
    """The peer did not accept or send a valid opening handshake."""


def accept_value(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode("ascii")).digest()).decode("ascii")


def upgrade_problem(method: str, headers: Mapping[str, str]) -> str | None:
    """Why a request is not a valid WebSocket opening handshake; None when it is."""
    if method != "GET":
        return "WebSocket handshakes use GET"
    if (headers.get("Upgrade") or "").lower() != "websocket":
        return "missing Upgrade: websocket"
    if "upgrade" not in [part.strip().lower() for part in (headers.get("Connection") or "").split(",")]:
        return "missing Connection: Upgrade"
    if (headers.get("Sec-WebSocket-Version") or "").strip() != "13":
        return "Sec-WebSocket-Version must be 13"
    try:
        if len(base64.b64decode(headers.get("Sec-WebSocket-Key") or "", validate=True)) != 16:
            return "Sec-WebSocket-Key must be 16 bytes in base64"
    except ValueError:
        return "Sec-WebSocket-Key is not base64"
    return None


def wants_upgrade(headers: Mapping[str, str]) -> bool:
    return (headers.get("Upgrade") or "").lower() == "websocket"


class WebSocket:
    """One open connection. receive() from one thread; the send methods from any."""

    def __init__(self, reader: BinaryIO, sock: socket.socket, *, client: bool) -> None:
        self._reader = reader
        self._sock = sock
        self._client = client  # a client masks what it sends and expects unmasked frames
        self._send_lock = threading.Lock()
        self.closed = False
        self.close_code: int | None = None

    # -- sending

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytearray([0x80 | opcode])
        mask_bit = 0x80 if self._client else 0
        length = len(payload)
        if length < 126:
            header.append(mask_bit | length)
        elif length < 1 << 16:
            header.append(mask_bit | 126)
            header += struct.pack("!H", length)
        else:
            header.append(mask_bit | 127)
            header += struct.pack("!Q", length)
        if self._client:
            mask = os.urandom(4)
            header += mask
            payload = _apply_mask(payload, mask)
        with self._send_lock:
            if self.closed and opcode != OP_CLOSE:
                raise ConnectionError("the WebSocket is closed")
            self._sock.sendall(bytes(header) + payload)

    def send_text(self, message: str) -> None:
        self._send_frame(OP_TEXT, message.encode("utf-8"))

    def send_bytes(self, message: bytes) -> None:
        self._send_frame(OP_BINARY, message)

    def ping(self, data: bytes = b"") -> None:
        self._send_frame(OP_PING, data[:125])

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame (once) and shut the connection down."""
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
        payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
        with contextlib.suppress(OSError):
            self._send_frame(OP_CLOSE, payload)
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    # -- receiving

    def _read_exact(self, size: int) -> bytes:
        data = self._reader.read(size) if size else b""
        if len(data) != size:
            raise ConnectionError("the peer closed the connection")
        return data

    def _read_frame(self) -> tuple[bool, int, bytes]:
        first, second = self._read_exact(2)
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
        masked, length = bool(second & 0x80), second & 0x7F
        if masked == self._client:
            # RFC 6455 5.1: a server must close on an unmasked client frame, a client on a masked one.
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "client frames must be masked, server frames must not")
        if length == 126:
            (length,) = struct.unpack("!H", self._read_exact(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read_exact(8))
        if opcode >= 0x8 and (length > 125 or not fin):
            raise ProtocolError(CLOSE_PROTOCOL_ERROR, "control frames must be short and unfragmented")
        if length > MAX_MESSAGE_BYTES:
            raise ProtocolError(CLOSE_TOO_BIG, f"frames are limited to {MAX_MESSAGE_BYTES} bytes")
        mask = self._read_exact(4) if masked else b""
        payload = self._read_exact(length)
        return fin, opcode, _apply_mask(payload, mask) if masked else payload

    def receive(self) -> str | bytes | None:
        """The next text (str) or binary (bytes) message; None once the connection is closed.

        Pings are answered and pongs dropped here; a close frame is answered and ends it.
        """
        parts: list[bytes] = []
        message_opcode: int | None = None
        try:
            while True:
                fin, opcode, payload = self._read_frame()
                if opcode == OP_PING:
                    self._send_frame(OP_PONG, payload)
                    continue
                if opcode == OP_PONG:
                    continue
                if opcode == OP_CLOSE:
                    self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CLOSE_NORMAL
                    # The answer echoes the peer's code (RFC 6455 5.5.1) unless it is not one a peer may send.
                    self.close(self.close_code if _sendable_code(self.close_code) else CLOSE_PROTOCOL_ERROR)
                    return None
                if opcode == OP_CONTINUATION:
                    if message_opcode is None:
                        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "continuation without a message")
                elif opcode in (OP_TEXT, OP_BINARY):
                    if message_opcode is not None:
                        raise ProtocolError(CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                    message_opcode = opcode
                else:
                    raise ProtocolError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                parts.append(payload)
                if sum(map(len, parts)) > MAX_MESSAGE_BYTES:
                    raise ProtocolError(CLOSE_TOO_BIG, f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
                if fin:
                    data = b"".join(parts)
                    if message_opcode == OP_BINARY:
                        return data
                    try:
                        return data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolError(CLOSE_INVALID_DATA, "text message is not UTF-8") from None
        except ProtocolError as exc:
            self.close(exc.code, str(exc))
            return None
        except (ConnectionError, OSError, ValueError):
            self.closed = True
            return None


def _sendable_code(code: int) -> bool:
    return 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015)


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    # XOR with the 4-byte key repeated: done on big integers, far faster than per byte.
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def server_handshake_headers(key: str) -> dict[str, str]:
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept_value(key)}


def connect(url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0) -> WebSocket:
    """Open a client connection to ws(s):// or http(s):// URL; TLS checks against the system trust store."""
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise HandshakeError(f"not a WebSocket URL: {url}")
    port = parts.port or (443 if secure else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=timeout)
    try:
        if secure:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [
            f"GET {target} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reader = sock.makefile("rb")
        status = reader.readline(65537).decode("latin-1").strip()
        received: dict[str, str] = {}
        while True:
            line = reader.readline(65537).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            received[name.strip().lower()] = value.strip()
        if status.split(" ")[1:2] != ["101"]:
            raise HandshakeError(f"the server answered {status!r} instead of 101")
        if received.get("sec-websocket-accept") != accept_value(key):
            raise HandshakeError("the server's Sec-WebSocket-Accept does not match")
        sock.settimeout(None)
        return WebSocket(reader, sock, client=True)
    except BaseException:
        sock.close()
        raise


def relay(one: WebSocket, other: WebSocket) -> None:
    """Copy messages both ways until either side closes, then close both."""

    def pump(source: WebSocket, sink: WebSocket) -> None:
        try:
            while (message := source.receive()) is not None:
                if isinstance(message, str):
                    sink.send_text(message)
                else:
                    sink.send_bytes(message)
        except OSError:
            pass
        finally:
            source.close(CLOSE_GOING_AWAY)
            sink.close(CLOSE_GOING_AWAY)

    back = threading.Thread(target=pump, args=(other, one), daemon=True, name="ws-relay")
    back.start()
    pump(one, other)
    back.join(5)
