#!/usr/bin/env bash
# What synchronous replication costs in write latency, on the running lab
# (make lab): the same pgbench tpcb-like run through PgBouncer on app1 with
# Patroni's synchronous_mode on and then off, at 1 client (the latency one
# commit pays) and at --clients (throughput under concurrency). Prints
# figures; asserts nothing. synchronous_mode is set back to what it was, even
# when the run is interrupted.
#
#   bench/sync_cost.sh [--clients N] [--duration S] [--scale N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

clients=8 duration=20 scale=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=bench/lib.sh
. bench/lib.sh
db=${bench_prefix}db1

patronictl() { docker exec "$db" patronictl -c /etc/patroni/config.yml "$@"; }
sync_mode() {  # the cluster's synchronous_mode as written in the DCS (true, false, quorum), null when unset
  patronictl show-config | python3 -c 'import json, sys, yaml; print(json.dumps((yaml.safe_load(sys.stdin) or {}).get("synchronous_mode")))'
}
leader_sync_names() {  # synchronous_standby_names on the leader itself
  local leader
  leader=$(patronictl list -f json | python3 -c 'import json,sys; print(next(m["Member"] for m in json.load(sys.stdin) if m["Role"] == "Leader"))')
  docker exec "${bench_prefix}$leader" su postgres -c "psql -XAtqc 'SHOW synchronous_standby_names'"
}
set_sync_mode() {  # true|false|quorum|null, then wait until the leader itself has (or has no) synchronous standby
  patronictl edit-config --force --set "synchronous_mode=$1" >/dev/null
  for _ in $(seq 1 60); do
    names=$(leader_sync_names 2>/dev/null || true)
    if [[ $1 == false || $1 == null ]]; then [[ -z $names ]] && return 0; else [[ -n $names ]] && return 0; fi
    sleep 1
  done
  echo "synchronous_mode=$1 did not take effect on the leader within 60 s" >&2
  return 1
}

(
  flock 9
  original=$(sync_mode)
  trap 'set_sync_mode "$original" || true' EXIT
  bench_ensure_pgbench
  echo "lab bench: tpcb-like through PgBouncer, scale $scale, ${duration}s per run (synchronous_mode was $original)"
  bench_pgbench 127.0.0.1 6432 -i -q -s "$scale" >/dev/null
  printf '%-18s %8s %12s %10s\n' "synchronous_mode" clients "latency ms" tps
  for mode in true false; do
    set_sync_mode "$mode"
    for c in $(printf '%s\n' 1 "$clients" | sort -nu); do
      report=$(bench_pgbench 127.0.0.1 6432 -c "$c" -j "$(( c < 2 ? 1 : 2 ))" -T "$duration" -n)
      latency=$(awk '/latency average/ {print $4}' <<<"$report")
      tps=$(awk '/^tps = / {print $3}' <<<"$report")
      printf '%-18s %8s %12s %10.1f\n' "$mode" "$c" "$latency" "$tps"
    done
  done
) 9>/tmp/neurondb-lab.lock
