"""One NeuronMCP child process per profile, over stdio: spawn, initialize, call, restart, stop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from typing import IO, Any

from neuronref import VERSION
from neuronref.logs import fields
from neuronref.metrics import Metrics

from .profiles import Profile

HANDSHAKE_TIMEOUT_S = 10.0
CALL_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 3.0
BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S = 0.5, 30.0, 30.0
# Only these are inherited: the API's own secrets (DB_PASSWORD, JWT_SECRET, the
# first-start variables) have no business in the child's environment.
INHERITED = ("PATH", "LANG", "LANGUAGE", "TZ", "HOME", "USER", "LOGNAME", "TMPDIR")
PROFILE_ENV = (
    ("NEURONDB_HOST", "neurondb_host"),
    ("NEURONDB_PORT", "neurondb_port"),
    ("NEURONDB_DATABASE", "neurondb_database"),
    ("NEURONDB_USER", "neurondb_user"),
    ("NEURONDB_PASSWORD", "neurondb_password"),
)


class ChildUnavailable(Exception):
    pass


def child_environment(profile: Profile, log_level: str, parent: dict[str, str] | None = None) -> dict[str, str]:
    source = os.environ if parent is None else parent
    environment = {name: source[name] for name in INHERITED if name in source}
    environment.update({name: value for name, value in source.items() if name.startswith("LC_")})
    for name, attribute in PROFILE_ENV:
        value = getattr(profile, attribute)
        if value is not None:
            environment[name] = str(value)
    # The child logs to its stderr, which the API copies into its own log: JSON to parse.
    environment["NEURONDB_LOG_FORMAT"] = "json"
    environment["NEURONDB_LOG_LEVEL"] = log_level
    return environment


class McpChild:
    def __init__(self, profile: Profile, log_level: str, log: logging.Logger, metrics: Metrics) -> None:
        assert profile.mcp_binary_path
        self.profile_id = profile.id
        self.binary = profile.mcp_binary_path
        self.environment = child_environment(profile, log_level)
        self.log = log
        self.metrics = metrics
        self.state = "starting"
        self.pid: int | None = None
        self.server_info: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._write_lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._pending_lock = threading.Lock()
        self._next_id = 1
        self._thread = threading.Thread(target=self._supervise, name=f"mcp-{profile.id[:8]}", daemon=True)

    def start(self) -> McpChild:
        self._thread.start()
        return self

    # -- the JSON-RPC client

    def _send(self, proc: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        with self._write_lock:
            proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            proc.stdin.flush()

    def _request(self, proc: subprocess.Popen[bytes], method: str, params: Any, timeout: float) -> dict[str, Any]:
        with self._pending_lock:
            request_id = self._next_id
            self._next_id += 1
            waiter: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
            self._pending[request_id] = waiter
        try:
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
            if params is not None:
                message["params"] = params
            try:
                self._send(proc, message)
            except (OSError, ValueError) as exc:
                raise ChildUnavailable(f"cannot write to the MCP child: {exc}") from None
            if not waiter[0].wait(timeout):
                raise ChildUnavailable(f"the MCP child did not answer {method} within {timeout:g} s")
            if not waiter[1]:
                raise ChildUnavailable("the MCP child exited before answering")
            return waiter[1][0]
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)

    def call(self, method: str, params: Any = None, timeout: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """The child's whole JSON-RPC response (result or error) to one request."""
        proc = self._proc
        if proc is None or not self._ready.is_set():
            raise ChildUnavailable(f"the MCP child of profile {self.profile_id} is {self.state}")
        return self._request(proc, method, params, timeout)

    def _read_stdout(self, stream: IO[bytes]) -> None:
        for raw in stream:
            try:
                message = json.loads(raw)
            except ValueError:
                self.log.warning("MCP child wrote a line that is not JSON", extra=fields(profile=self.profile_id))
                continue
            request_id = message.get("id") if isinstance(message, dict) else None
            with self._pending_lock:
                waiter = self._pending.get(request_id) if isinstance(request_id, int) else None
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()

    def _read_stderr(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.log.debug("mcp child", extra=fields(profile=self.profile_id, pid=self.pid, child_log=line))

    def _fail_pending(self) -> None:
        with self._pending_lock:
            for event, _slot in self._pending.values():
                event.set()

    # -- supervision

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [self.binary],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.environment,
            close_fds=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True).start()
        return proc

    def _handshake(self, proc: subprocess.Popen[bytes]) -> None:
        params = {
            "protocolVersion": "2025-03-26",
            "capabilities": {},
            "clientInfo": {"name": "neurondesktop", "version": VERSION},
        }
        answer = self._request(proc, "initialize", params, HANDSHAKE_TIMEOUT_S)
        if "result" not in answer:
            raise ChildUnavailable(f"initialize failed: {answer.get('error')}")
        self.server_info = answer["result"].get("serverInfo")
        self._send(proc, {"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _supervise(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                proc = self._spawn()
            except OSError as exc:
                self.state = "failed"
                self.log.error(
                    "cannot start the MCP child",
                    extra=fields(profile=self.profile_id, binary=self.binary, error=exc.strerror or str(exc)),
                )
            else:
                self._proc, self.pid = proc, proc.pid
                try:
                    self._handshake(proc)
                except (ChildUnavailable, OSError, ValueError) as exc:
                    self.log.error("MCP child handshake failed", extra=fields(profile=self.profile_id, error=str(exc)))
                    proc.kill()
                else:
                    self.state = "ready"
                    self._ready.set()
                    self.log.info(
                        "MCP child ready", extra=fields(profile=self.profile_id, pid=proc.pid, server=self.server_info)
                    )
                code = proc.wait()
                self._ready.clear()
                self._fail_pending()
                if self._stopping.is_set():
                    break
                self.state = "restarting"
                self.metrics.count("mcp_child_restarts_total", "MCP children restarted.", profile=self.profile_id)
                self.log.warning(
                    "MCP child exited; restarting it", extra=fields(profile=self.profile_id, pid=proc.pid, code=code)
                )
            if time.monotonic() - started > HEALTHY_AFTER_S:
                backoff = BACKOFF_FIRST_S
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        self.state = "stopped"

    def stop(self) -> None:
        """Close the child's stdin (NeuronMCP exits on that), then terminate, then kill."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                assert proc.stdin is not None
                with self._write_lock:
                    proc.stdin.close()
            except OSError:
                pass
            for action in (None, proc.terminate, proc.kill):
                if action is not None:
                    action()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._thread.join(STOP_TIMEOUT_S)
