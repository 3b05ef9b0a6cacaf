# shellcheck shell=bash
# Shared by the lab benches: where things are and how pgbench runs on app1.
# Sourced from the repository root with the venv on PATH.

bench_inventory=${NEURONDB_LAB_INVENTORY:-inventories/lab/hosts.yml}
bench_prefix=${NEURONDB_LAB_PREFIX:-neurondb-lab-}
bench_app=${bench_prefix}app1
bench_ca=lab/.state/pki/ca.crt

# The inventory address of a lab host.
bench_address() {
  ansible-inventory -i "$bench_inventory" --host "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["neurondb_address"])'
}

# The address of the current Patroni leader, asked of every member in turn.
bench_leader() {
  local addresses
  addresses=$(for host in $(ansible-inventory -i "$bench_inventory" --graph postgres | sed -n 's/.*--//p'); do
    bench_address "$host"; done)
  python3 - "$bench_ca" $addresses <<'PY'
import json, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
for address in sys.argv[2:]:
    try:
        with urllib.request.urlopen(f"https://{address}:8008/cluster", context=ctx, timeout=5) as r:
            cluster = json.load(r)
        print(next(m["host"] for m in cluster["members"] if m["role"] == "leader"))
        break
    except (OSError, StopIteration):
        continue
PY
}

# pgbench on app1, installed from Debian's postgresql-17 when missing.
bench_ensure_pgbench() {
  docker exec "$bench_app" bash -c 'command -v /usr/lib/postgresql/17/bin/pgbench >/dev/null ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-17 >/dev/null'
  docker exec "$bench_app" ln -sf /usr/lib/postgresql/17/bin/pgbench /usr/local/bin/pgbench
}

# pgbench on app1 as neurondb_app: bench_pgbench HOST PORT ARGS...; prints its
# whole report. The app role's own settings hold the password: nothing on a
# command line.
bench_pgbench() {
  local host=$1 port=$2
  shift 2
  docker exec "$bench_app" bash -c '
    set -a; . <(sed "s/^\(DB_PASSWORD\)=/PGPASSWORD=/" /etc/neurondb/neuronagent.env | grep ^PGPASSWORD); set +a
    exec pgbench "$@"' pgbench -h "$host" -p "$port" -U neurondb_app -d neurondb "$@" 2>&1
}
