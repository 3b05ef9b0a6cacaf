#!/usr/bin/env bash
# Run the reference services' tests in the lab image, on what Debian 13 ships:
# python3 3.13 with python3-psycopg, PostgreSQL 17 with the real pgvector,
# PgBouncer and Node.js; and install the three .debs there with dpkg (their
# dependencies checked for real). Nothing is downloaded: apt uses the image's
# cache, and pytest (which the image lacks) is the venv's pure-Python copy.
#
# Usage: reference/test-in-trixie.sh [pytest arguments]
# Environment: NEURONDB_LAB_IMAGE (default neurondb-lab:trixie), VENV_PYTHON.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${NEURONDB_LAB_IMAGE:-neurondb-lab:trixie}
venv_python=${VENV_PYTHON:-$repo/.venv/bin/python}
libs=$(mktemp -d)
trap 'rm -rf "$libs"' EXIT
site=$("$venv_python" -c 'import os, pytest; print(os.path.dirname(os.path.dirname(pytest.__file__)))')
for module in pytest _pytest pluggy iniconfig packaging pygments py.py; do
  if [[ -e $site/$module ]]; then cp -r "$site/$module" "$libs/"; fi
done
chmod -R a+rX "$libs"
docker run --rm -v "$repo:/src:ro" -v "$libs:/pylibs:ro" "$image" bash -euo pipefail -c '
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-download postgresql-17 postgresql-17-pgvector python3-psycopg nodejs pgbouncer >/dev/null
  out=$(mktemp -d)
  python3 /src/reference/build.py --out "$out" >/dev/null
  (cd "$out" && sha256sum -c SHA256SUMS)
  # dpkg, not apt: apt --no-download refuses local files. python3-psycopg is there
  # already, so dpkg fails on any unmet dependency or file conflict.
  dpkg -i "$out"/neuronagent_*.deb "$out"/neurondesktop_*.deb "$out"/neuronmcp_*.deb
  apt-get check -q
  dpkg -L neuronagent neurondesktop neuronmcp | grep -E "^/(usr/bin|usr/share/neuron[a-z]*|etc/neuronagent)/" | sort
  neuronagent --version && neurondesktop --version && neurondb-mcp --version
  echo "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}" | neurondb-mcp
  cd /src
  PYTHONPATH=/pylibs PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -p no:cacheprovider \
    --confcutdir=tests/unit/reference -q tests/unit/reference "$@"
' bash "$@"
