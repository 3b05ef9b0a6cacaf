#!/usr/bin/env bash
# The controller's Python environment (.venv) from the pinned requirements.
# Re-installs only when requirements.txt changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "preparing the Python environment (.venv)"
# Debian's python3 comes without venv/ensurepip: python3-venv brings them.
python3 -c 'import ensurepip, venv' 2>/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
}
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -r requirements.txt
echo "$want" > "$stamp"
