# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The frontend tarball's `next start`, run by Node.js as a deployment runs it."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import typing as t
from pathlib import Path

import pytest
from conftest import Installed
from support import Launcher, Proc, free_port, run

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="no node binary (apt-get install nodejs)")


def app_dir(installed: Installed) -> Path:
    return installed.root / "opt" / "neurondesktop-frontend"


def start_next(launcher: Launcher, installed: Installed, env: t.Dict[str, str], args: t.Sequence[str] = ()) -> Proc:
    assert NODE is not None
    directory = app_dir(installed)
    command = [NODE, str(directory / "node_modules" / ".bin" / "next"), "start", str(directory), *args]
    return launcher.spawn(command, env, name="next", stdout=subprocess.PIPE)


def test_serves_the_prebuilt_page_on_port(launcher: Launcher, installed: Installed) -> None:
    port, ignored = free_port(), free_port()
    web = start_next(launcher, installed, {"PORT": str(port), "SERVER_PORT": str(ignored)}, ["-H", "127.0.0.1"])
    web.port = port
    web.wait_listening()
    page = web.get("/")
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    text = page.body.decode()
    assert '<meta name="neurondesktop-api-url" content="/api/v1"/>' in text
    chunk = re.search(r'src="(/_next/static/chunks/[^"]+)"', text)
    assert chunk is not None
    script = web.get(chunk.group(1))
    assert script.status == 200 and b'NEXT_PUBLIC_API_URL = "/api/v1"' in script.body
    for path in ("/health", "/api/v1/health", "/metrics", "/_next/static/../BUILD_ID", "/_next/static/%2e%2e/BUILD_ID"):
        assert web.get(path).status == 404, path
    assert web.post("/", {}).status == 405
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ignored), timeout=0.5).close()
    assert web.stop() == 0  # SIGTERM: a clean exit


def test_port_option_beats_port_variable(launcher: Launcher, installed: Installed) -> None:
    port = free_port()
    web = start_next(launcher, installed, {"PORT": str(free_port())}, ["-p", str(port), "-H", "127.0.0.1"])
    web.port = port
    assert web.wait_listening().get("/").status == 200
    assert web.stop() == 0


def test_default_port_is_3000(launcher: Launcher, installed: Installed) -> None:
    web = start_next(launcher, installed, {}, ["-H", "127.0.0.1"])
    assert web.proc.stdout is not None
    first_line = web.proc.stdout.readline().decode()
    second_line = web.proc.stdout.readline().decode()
    if web.proc.poll() is not None:  # 3000 is taken on this machine: the error names it
        assert ":3000" in web.stderr()
        return
    assert "Next.js" in first_line
    assert "http://127.0.0.1:3000" in second_line
    assert web.stop() == 0


def test_exits_1_without_a_build(installed: Installed, tmp_path: Path) -> None:
    assert NODE is not None
    shutil.copytree(app_dir(installed), tmp_path / "app", symlinks=True)
    (tmp_path / "app" / ".next" / "BUILD_ID").unlink()
    done = run([NODE, str(tmp_path / "app" / "node_modules" / ".bin" / "next"), "start", str(tmp_path / "app")], {})
    assert done.returncode == 1
    assert "Could not find a production build" in done.stderr
