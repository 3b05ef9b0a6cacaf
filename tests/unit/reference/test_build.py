# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""reference/build.py: deterministic artifacts with the real packages' layout."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import typing as t
from pathlib import Path

import pytest
from conftest import BUILD, Installed, ar_members, build_artifacts, tar_entries

EPOCH = 1767225600
DEBS = {
    "neuronagent": {
        "./usr/bin/neuronagent": 0o755,
        "./etc/neuronagent/config.example.yaml": 0o644,
        "./usr/share/neuronagent/sql/neuron-agent.sql": 0o644,
    },
    "neurondesktop": {
        "./usr/bin/neurondesktop": 0o755,
        "./usr/share/neurondesktop/neurondesktop.sql": 0o644,
    },
    "neuronmcp": {
        "./usr/bin/neurondb-mcp": 0o755,
        "./usr/share/neuronmcp/sql/neuron-mcp.sql": 0o644,
    },
}


def deb_parts(path: str) -> t.Tuple[t.List[str], t.Dict[str, bytes]]:
    data = Path(path).read_bytes()
    members = ar_members(data)
    return list(members), members


def test_same_inputs_give_the_same_bytes(tmp_path: Path, installed: Installed) -> None:
    again = build_artifacts(tmp_path / "again")
    assert again.keys() == installed.artifacts.keys()
    for name, artifact in installed.artifacts.items():
        first, second = Path(artifact["path"]).read_bytes(), Path(again[name]["path"]).read_bytes()
        assert first == second, name
        assert hashlib.sha256(first).hexdigest() == artifact["sha256"] == again[name]["sha256"]
    other = build_artifacts(tmp_path / "other", "--version", "2.0.1-1", "--api-url", "https://api.example/v1/")
    assert Path(other["neuronagent"]["path"]).name == "neuronagent_2.0.1-1_all.deb"
    assert Path(other["neurondesktop-frontend"]["path"]).name == "neurondesktop-frontend-2.0.1-1.tar.gz"
    assert other["neuronmcp"]["sha256"] != installed.artifacts["neuronmcp"]["sha256"]


def test_sha256sums_beside_the_artifacts(installed: Installed) -> None:
    sums = Path(installed.artifacts["SHA256SUMS"]["path"])
    lines = sums.read_text().splitlines()
    names = sorted(Path(a["path"]).name for key, a in installed.artifacts.items() if key != "SHA256SUMS")
    assert [line.split("  ")[1] for line in lines] == names
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((sums.parent / name).read_bytes()).hexdigest() == digest
    if shutil.which("sha256sum"):
        done = subprocess.run(
            ["sha256sum", "-c", "SHA256SUMS"], cwd=sums.parent, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("package", sorted(DEBS))
def test_deb_layout(installed: Installed, package: str) -> None:
    order, members = deb_parts(installed.artifacts[package]["path"])
    assert order == ["debian-binary", "control.tar.gz", "data.tar.gz"]
    assert members["debian-binary"] == b"2.0\n"
    control_tar = tar_entries(members["control.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(members["control.tar.gz"]), mode="r:gz") as archive:
        control = archive.extractfile("./control").read().decode()  # type: ignore[union-attr]
        md5sums = archive.extractfile("./md5sums").read().decode()  # type: ignore[union-attr]
    fields = dict(line.split(": ", 1) for line in control.splitlines() if not line.startswith(" "))
    assert fields["Package"] == package
    assert fields["Version"] == "1.0.0"
    assert fields["Architecture"] == "all"
    assert fields["Maintainer"]
    assert fields["Depends"] == "python3 (>= 3.11), python3-psycopg"
    assert fields["Description"]
    assert "./conffiles" in control_tar if package == "neuronagent" else "./conffiles" not in control_tar
    data = tar_entries(members["data.tar.gz"])
    for name, mode in DEBS[package].items():
        assert data[name].isfile(), name
        assert data[name].mode == mode, name
    assert all(entry.uid == entry.gid == 0 and entry.uname == entry.gname == "root" for entry in data.values())
    assert {entry.mtime for entry in [*data.values(), *control_tar.values()]} == {EPOCH}
    assert list(data) == sorted(data)
    assert not [name for name in data if "systemd" in name or name.endswith((".service", ".socket", ".timer"))]
    with tarfile.open(fileobj=io.BytesIO(members["data.tar.gz"]), mode="r:gz") as archive:
        for line in md5sums.splitlines():
            digest, name = line.split("  ")
            assert hashlib.md5(archive.extractfile("./" + name).read()).hexdigest() == digest  # type: ignore[union-attr]
    # The shared code sits under the package's own directory.
    assert f"./usr/lib/{package}/neuronref/httpd.py" in data
    assert data[next(iter(DEBS[package]))].size < 1000  # /usr/bin/* is a launcher only


def test_packages_share_no_file(installed: Installed) -> None:
    owners: t.Dict[str, str] = {}
    for package in DEBS:
        _order, members = deb_parts(installed.artifacts[package]["path"])
        for name, entry in tar_entries(members["data.tar.gz"]).items():
            if not entry.isdir():
                assert name not in owners, f"{name} is in {owners.get(name)} and {package}"
                owners[name] = package


def test_dpkg_reads_and_installs_them(installed: Installed, tmp_path: Path) -> None:
    if not shutil.which("dpkg-deb") or not shutil.which("dpkg"):
        pytest.skip("no dpkg on this machine")
    debs = [installed.artifacts[package]["path"] for package in sorted(DEBS)]
    for deb in debs:
        info = subprocess.run(["dpkg-deb", "--info", deb], capture_output=True, text=True, check=False)
        assert info.returncode == 0 and "Architecture: all" in info.stdout, info.stderr
        contents = subprocess.run(["dpkg-deb", "--contents", deb], capture_output=True, text=True, check=False)
        assert contents.returncode == 0 and "./usr/bin/" in contents.stdout, contents.stderr
    root = tmp_path / "root"
    for directory in ("info", "updates", "triggers"):
        (root / "var/lib/dpkg" / directory).mkdir(parents=True)
    (root / "var/lib/dpkg/status").touch()
    # python3 and python3-psycopg are not in this empty root: only the dependencies are forced.
    command = ["dpkg", f"--root={root}", "--force-depends", "--force-not-root", "--log=/dev/null", "-i", *debs]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trying to overwrite" not in done.stderr
    for package, files in DEBS.items():
        for name in files:
            assert (root / name).is_file(), name
        status = subprocess.run(["dpkg", f"--root={root}", "-s", package], capture_output=True, text=True, check=False)
        assert "Status: install ok installed" in status.stdout


def test_frontend_tarball(installed: Installed, tmp_path: Path) -> None:
    path = installed.artifacts["neurondesktop-frontend"]["path"]
    entries = tar_entries(Path(path).read_bytes())
    link = entries["node_modules/.bin/next"]
    assert link.issym() and link.linkname == "../next/dist/bin/next"
    assert entries["node_modules/next/dist/bin/next"].mode == 0o755
    with tarfile.open(path, mode="r:gz") as archive:
        package_json = json.load(archive.extractfile("package.json"))  # type: ignore[arg-type]
        next_bin = archive.extractfile("node_modules/next/dist/bin/next").read()  # type: ignore[union-attr]
        page = archive.extractfile(".next/server/app/index.html").read().decode()  # type: ignore[union-attr]
        build_id = archive.extractfile(".next/BUILD_ID").read().decode()  # type: ignore[union-attr]
    assert package_json["scripts"]["start"] == "next start"
    assert next_bin.startswith(b"#!/usr/bin/env node\n")
    assert '"NEXT_PUBLIC_API_URL": "/api/v1"' in page and build_id in page
    assert {entry.mtime for entry in entries.values()} == {EPOCH}

    remote = build_artifacts(tmp_path / "remote", "--api-url", "https://api.example/api/v1")
    with tarfile.open(remote["neurondesktop-frontend"]["path"], mode="r:gz") as archive:
        page = archive.extractfile(".next/server/app/index.html").read().decode()  # type: ignore[union-attr]
    assert '"NEXT_PUBLIC_API_URL": "https://api.example/api/v1"' in page


@pytest.mark.parametrize(
    "args", [["--api-url", "javascript:alert(1)"], ["--api-url", '/x"><script>'], ["--version", "v1"]]
)
def test_bad_arguments_are_refused(tmp_path: Path, args: t.List[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(tmp_path), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert not list(tmp_path.iterdir())
