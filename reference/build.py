#!/usr/bin/env python3
# Copyright: neurondb.ha contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Build the reference services as the real ones are delivered: three .deb packages and the
frontend's tarball, with a SHA256SUMS file beside them.

    python3 reference/build.py --out DIR [--version 1.0.0] [--api-url /api/v1]

Pure Python (no dpkg-deb), so any controller can build them, and deterministic:
fixed timestamps (SOURCE_DATE_EPOCH when set), sorted entries, root:root owners,
gzip without a time or name; the same inputs give the same bytes (with the same
zlib). Prints {"neuronagent": {"path": ..., "sha256": ...}, ...} on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import os
import re
import struct
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
DEFAULT_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
MAINTAINER = "neurondb.ha contributors <neurondb-ha@users.noreply.github.com>"
VERSION_RE = re.compile(r"[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~]+)?")
API_URL_RE = re.compile(r"(?:/[A-Za-z0-9._~!$&()*+,;=:@%/-]*|https?://[A-Za-z0-9._~!$&()*+,;=:@%/\[\]-]+)")
COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: neurondb.ha reference services
Comment: A stand-in for the licensed NeuronDB service of the same name, built by
 the neurondb.ha collection for labs and tests. Not the real service.

Files: *
Copyright: neurondb.ha contributors
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
"""


@dataclass
class Entry:
    """One member of an archive: a directory, a file or a symlink."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    kind: bytes = tarfile.REGTYPE
    link: str = ""


@dataclass
class Package:
    name: str
    program: str  # the file in /usr/bin
    module: str  # the Python package under /usr/lib/<name>/
    summary: str
    description: str
    files: dict[str, Path | bytes] = field(default_factory=dict)  # path in the package -> source
    conffiles: tuple[str, ...] = ()


PACKAGES = (
    Package(
        "neuronagent",
        "neuronagent",
        "neuronagent",
        "NeuronAgent (neurondb.ha reference build)",
        "The agent API of NeuronDB: /health, /metrics, /api/v1 with API keys, a WebSocket,\n"
        "and `neuronagent generate-key`. A stand-in for the licensed binary; no systemd unit.",
        {
            "usr/share/neuronagent/sql/neuron-agent.sql": HERE / "sql" / "neuron-agent.sql",
            "etc/neuronagent/config.example.yaml": HERE / "etc" / "config.example.yaml",
        },
        ("/etc/neuronagent/config.example.yaml",),
    ),
    Package(
        "neurondesktop",
        "neurondesktop",
        "neurondesktop",
        "NeuronDesktop API (neurondb.ha reference build)",
        "Profiles, sign-in, and gateways to NeuronAgent and to NeuronMCP children it spawns.\n"
        "A stand-in for the licensed binary; no systemd unit.",
        {"usr/share/neurondesktop/neurondesktop.sql": HERE / "sql" / "neurondesktop.sql"},
    ),
    Package(
        "neuronmcp",
        "neurondb-mcp",
        "neuronmcp",
        "NeuronMCP (neurondb.ha reference build)",
        "An MCP server (JSON-RPC 2.0 over stdio, optionally HTTP with server-sent events).\n"
        "A stand-in for the licensed binary; no systemd unit.",
        {"usr/share/neuronmcp/sql/neuron-mcp.sql": HERE / "sql" / "neuron-mcp.sql"},
    ),
)


# --------------------------------------------------------------------------- archives


def _with_parents(entries: list[Entry], prefix: str) -> list[Entry]:
    """Add the directories leading to every entry, and sort (directories before their content)."""
    names = {entry.name for entry in entries}
    result = list(entries)
    for entry in entries:
        parent = entry.name.rstrip("/").rpartition("/")[0]
        while parent:
            directory = parent + "/"
            if directory not in names:
                names.add(directory)
                result.append(Entry(directory, mode=0o755, kind=tarfile.DIRTYPE))
            parent = parent.rpartition("/")[0]
    if prefix:
        result.append(Entry(prefix, mode=0o755, kind=tarfile.DIRTYPE))
    return sorted(result, key=lambda entry: entry.name)


def tar_gz(entries: list[Entry], epoch: int, prefix: str = "") -> bytes:
    """A gzip-compressed tar of entries; prefix ("./" for dpkg) goes before every name."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for entry in _with_parents(entries, prefix):
            info = tarfile.TarInfo(entry.name if entry.name == prefix else prefix + entry.name)
            info.mtime, info.mode, info.type = epoch, entry.mode, entry.kind
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if entry.kind == tarfile.SYMTYPE:
                info.linkname = entry.link
            if entry.kind == tarfile.REGTYPE:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
            else:
                archive.addfile(info)
    return gzip_bytes(raw.getvalue())


def gzip_bytes(data: bytes) -> bytes:
    """RFC 1952 with no name, time 0 and OS "unknown": gzip.compress writes the platform's OS byte."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    body = compressor.compress(data) + compressor.flush()
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\xff"
    return header + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def ar(members: list[tuple[str, bytes]], epoch: int) -> bytes:
    """A System V ar archive, the container of a .deb."""
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{epoch:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode("ascii")
        assert len(header) == 60
        out += header + data
        if len(data) % 2:
            out += b"\n"
    return bytes(out)


# --------------------------------------------------------------------------- packages


def python_files(directory: Path) -> list[Path]:
    return sorted(path for path in directory.glob("*.py") if path.is_file())


def launcher(package: Package) -> bytes:
    text = (HERE / "bin" / "launcher.py.in").read_text(encoding="utf-8")
    for key, value in (("@PROGRAM@", package.program), ("@PACKAGE@", package.name), ("@MODULE@", package.module)):
        text = text.replace(key, value)
    return text.encode()


def data_entries(package: Package) -> list[Entry]:
    entries = [Entry(f"usr/bin/{package.program}", launcher(package), 0o755)]
    # Each package carries its own copy of the shared code: no file belongs to two packages.
    for module in ("neuronref", package.module):
        for source in python_files(SRC / module):
            entries.append(Entry(f"usr/lib/{package.name}/{module}/{source.name}", source.read_bytes()))
    for target, source in package.files.items():
        entries.append(Entry(target, source.read_bytes() if isinstance(source, Path) else source))
    entries.append(Entry(f"usr/share/doc/{package.name}/copyright", COPYRIGHT.encode()))
    return entries


def control_entries(package: Package, version: str, data: list[Entry]) -> list[Entry]:
    installed_kib = sum((len(entry.data) + 1023) // 1024 for entry in data) + len(
        {e.name.rpartition("/")[0] for e in data}
    )
    description = "\n".join(f" {line}" if line else " ." for line in package.description.splitlines())
    control = (
        f"Package: {package.name}\n"
        f"Version: {version}\n"
        "Architecture: all\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {installed_kib}\n"
        "Depends: python3 (>= 3.11), python3-psycopg\n"
        "Section: database\n"
        "Priority: optional\n"
        f"Description: {package.summary}\n{description}\n"
    )
    conffiles = {name.lstrip("/") for name in package.conffiles}
    md5sums = "".join(
        f"{hashlib.md5(entry.data).hexdigest()}  {entry.name}\n"
        for entry in sorted(data, key=lambda e: e.name)
        if entry.kind == tarfile.REGTYPE and entry.name not in conffiles
    )
    entries = [Entry("control", control.encode()), Entry("md5sums", md5sums.encode())]
    if package.conffiles:
        entries.append(Entry("conffiles", "".join(f"{name}\n" for name in package.conffiles).encode()))
    return entries


def build_deb(package: Package, version: str, epoch: int) -> bytes:
    data = data_entries(package)
    control = control_entries(package, version, data)
    return ar(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", tar_gz(control, epoch, "./")),
            ("data.tar.gz", tar_gz(data, epoch, "./")),
        ],
        epoch,
    )


# --------------------------------------------------------------------------- frontend


def _script_json(value: object) -> str:
    """JSON safe inside <script>: no </script> or <!-- can close or hide it."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build_frontend(version: str, api_url: str, epoch: int) -> bytes:
    next_js = (HERE / "frontend" / "next.js").read_bytes()
    build_id = hashlib.sha256(b"\0".join([version.encode(), api_url.encode(), next_js])).hexdigest()[:21]
    chunk = (
        "// NeuronDesktop frontend (reference build): the API URL is fixed at build time.\n"
        f"const NEXT_PUBLIC_API_URL = {_script_json(api_url)};\n"
        "fetch(NEXT_PUBLIC_API_URL + '/health')\n"
        "  .then((r) => { document.getElementById('api-status').textContent = 'API: HTTP ' + r.status; })\n"
        "  .catch((e) => { document.getElementById('api-status').textContent = 'API unreachable: ' + e; });\n"
    )
    chunk_name = f"chunks/app-{hashlib.sha256(chunk.encode()).hexdigest()[:16]}.js"
    next_data = {"buildId": build_id, "page": "/", "env": {"NEXT_PUBLIC_API_URL": api_url}}
    url = html.escape(api_url)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charSet="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f'<title>NeuronDesktop</title><meta name="neurondesktop-api-url" content="{url}"/>'
        f'<script src="/_next/static/{chunk_name}" defer=""></script></head>'
        f'<body><div id="__next"><h1>NeuronDesktop</h1><p>API: <code id="api-url">{url}</code></p>'
        '<p id="api-status">Checking the API...</p></div>'
        f'<script id="__NEXT_DATA__" type="application/json">{_script_json(next_data)}</script></body></html>\n'
    )
    package_json = {
        "name": "neurondesktop-frontend",
        "version": version,
        "private": True,
        "description": "NeuronDesktop frontend, neurondb.ha reference build (a stand-in for the Next.js app)",
        "scripts": {"start": "next start"},
        "dependencies": {"next": "14.2.0-neurondb-reference"},
        "engines": {"node": ">=18"},
    }
    next_package = {"name": "next", "version": "14.2.0-neurondb-reference", "bin": {"next": "dist/bin/next"}}
    entries = [
        Entry("package.json", (json.dumps(package_json, indent=2) + "\n").encode()),
        Entry(".next/BUILD_ID", build_id.encode()),
        Entry(".next/server/app/index.html", page.encode()),
        Entry(f".next/static/{chunk_name}", chunk.encode()),
        Entry("node_modules/next/package.json", (json.dumps(next_package, indent=2) + "\n").encode()),
        Entry("node_modules/next/dist/bin/next", next_js, 0o755),
        Entry("node_modules/.bin/next", kind=tarfile.SYMTYPE, mode=0o777, link="../next/dist/bin/next"),
    ]
    return tar_gz(entries, epoch)


# --------------------------------------------------------------------------- main


def build(out: Path, version: str, api_url: str, epoch: int) -> dict[str, dict[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, tuple[str, bytes]] = {}
    for package in PACKAGES:
        artifacts[package.name] = (f"{package.name}_{version}_all.deb", build_deb(package, version, epoch))
    artifacts["neurondesktop-frontend"] = (
        f"neurondesktop-frontend-{version}.tar.gz",
        build_frontend(version, api_url, epoch),
    )
    result: dict[str, dict[str, str]] = {}
    sums = []
    for key, (filename, data) in artifacts.items():
        path = out / filename
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        result[key] = {"path": str(path.resolve()), "sha256": digest}
        sums.append(f"{digest}  {filename}\n")
    sums_data = "".join(sorted(sums, key=lambda line: line.split("  ", 1)[1])).encode()
    sums_path = out / "SHA256SUMS"
    sums_path.write_bytes(sums_data)
    result["SHA256SUMS"] = {"path": str(sums_path.resolve()), "sha256": hashlib.sha256(sums_data).hexdigest()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for the artifacts (created)")
    parser.add_argument("--version", default="1.0.0", help="package version (default 1.0.0)")
    parser.add_argument("--api-url", default="/api/v1", help="NEXT_PUBLIC_API_URL compiled into the frontend")
    args = parser.parse_args(argv)
    if not VERSION_RE.fullmatch(args.version):
        parser.error(f"--version {args.version!r} is not a Debian version such as 1.0.0 or 1.0.0-1")
    api_url = args.api_url if args.api_url == "/" else args.api_url.rstrip("/")
    if not API_URL_RE.fullmatch(api_url):
        parser.error(f"--api-url {args.api_url!r} must be a path (/api/v1) or an http(s) URL")
    raw_epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if raw_epoch and not raw_epoch.isdigit():
        parser.error(f"SOURCE_DATE_EPOCH={raw_epoch!r} is not a number of seconds")
    epoch = int(raw_epoch) if raw_epoch else DEFAULT_EPOCH
    json.dump(build(args.out, args.version, api_url, epoch), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
