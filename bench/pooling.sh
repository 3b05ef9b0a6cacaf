#!/usr/bin/env bash
# Throughput of the pooled path against direct connections, and of the HTTPS
# edge, on the running lab (make lab). Prints figures; asserts nothing.
#
#   bench/pooling.sh [--clients N] [--duration S] [--scale N] [--http-duration S]
#
# pgbench runs on app1 (where the applications are) in the same run, with the
# same clients and duration, against
#   pooled: 127.0.0.1:6432  PgBouncer (transaction pool) → HAProxy router → primary
#   direct: <primary>:5432  straight to the Patroni leader (TLS)
# for the select-only and the tpcb-like scripts, then wrk drives requests
# through Nginx to the API (static health) and the agent (one SELECT 1 each).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

clients=20 duration=30 scale=20 http_duration=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --scale) scale=$2; shift 2 ;;
    --http-duration) http_duration=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

# shellcheck source=bench/lib.sh
. bench/lib.sh
lb_address=$(bench_address lb1)

run_pgbench() {  # host port label extra-args...: prints "label tps"
  local host=$1 port=$2 label=$3
  shift 3
  bench_pgbench "$host" "$port" "$@" | awk -v label="$label" '/^tps = / {printf "%s %s\n", label, $3}'
}

(
  flock 9
  # Asked once the lock is held: a bench that held it before may have moved the leader.
  leader=$(bench_leader)
  [[ -n "$leader" ]] || { echo "no Patroni leader found" >&2; exit 1; }
  echo "lab bench: clients=$clients duration=${duration}s scale=$scale leader=$leader"
  bench_ensure_pgbench
  echo "initialising pgbench tables (scale $scale) through PgBouncer"
  run_pgbench 127.0.0.1 6432 init -i -q -s "$scale" >/dev/null

  declare -A tps
  for mode in select-only tpcb-like; do
    flag=$([[ $mode == select-only ]] && echo -S || true)
    for path in pooled direct; do
      if [[ $path == pooled ]]; then host=127.0.0.1 port=6432; else host=$leader port=5432; fi
      # shellcheck disable=SC2086 # $flag is empty for the default (tpcb-like) script
      out=$(run_pgbench "$host" "$port" "$path" $flag -c "$clients" -j 2 -T "$duration" -n)
      tps[$mode/$path]=$(awk '{print $2}' <<<"$out")
      printf '%-12s %-7s %10.1f tps\n' "$mode" "$path" "${tps[$mode/$path]}"
    done
    printf '%-12s ratio   %10.2f (pooled / direct)\n' "$mode" \
      "$(python3 -c "print(${tps[$mode/pooled]} / ${tps[$mode/direct]})")"
  done

  command -v wrk >/dev/null || { apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q wrk >/dev/null; }; }
  for path in /api/v1/health /agent/health; do
    report=$(wrk -t2 -c32 -d"${http_duration}s" "https://$lb_address$path" 2>&1)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$report")
    errors=$(awk '/Non-2xx/ {print $5}' <<<"$report")
    printf 'nginx %-16s %10s req/s (wrk -t2 -c32 %ss)%s\n' "$path" "$rps" "$http_duration" "${errors:+, non-2xx: $errors}"
  done
) 9>/tmp/neurondb-lab.lock
