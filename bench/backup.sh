#!/usr/bin/env bash
# Backup and restore throughput on generated data, and the WAL archive lag
# (the RPO of a quiet primary), on a running lab that has the backup plays
# (s3_lab, pgbackrest) and a scratch host. Prints figures; asserts nothing.
#
#   bench/backup.sh [--scales "10 40"] [--rpo-samples 2]
#
# For each pgbench scale (pgbench -i in a database `bench`, replaced each
# time): a full backup on the repository host (or the leader), a short
# pgbench run and an incremental backup, then a restore of the full backup
# onto the scratch host (--type=immediate, never archiving, port 5433) timed
# in two parts: pgBackRest's restore, and PostgreSQL's recovery until it
# accepts writes. Lab containers are reached with docker exec, like the other
# benches. Environment as lab/lab.sh: NEURONDB_LAB_INVENTORY, NEURONDB_LAB_PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

scales="10 40" rpo_samples=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --scales) scales=$2; shift 2 ;;
    --rpo-samples) rpo_samples=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

inventory="${NEURONDB_LAB_INVENTORY:-inventories/lab/hosts.yml}"
prefix="${NEURONDB_LAB_PREFIX:-neurondb-lab-}"

# Groups and addresses as the playbooks see them.
eval "$(ansible-inventory -i "$inventory" --list | python3 -c '
import json, sys
inv = json.load(sys.stdin)
def hosts(group):
    return inv.get(group, {}).get("hosts", [])
hv = inv["_meta"]["hostvars"]
pg = hosts("postgres")
print("pg_hosts=(%s)" % " ".join(pg))
print("pg_addresses=(%s)" % " ".join(hv[h]["neurondb_address"] for h in pg))
print("backup_host=%s" % (hosts("backup") or [""])[0])
print("scratch_host=%s" % (hosts("scratch") or [""])[0])
')"
[[ -n "$scratch_host" ]] || { echo "the inventory has no scratch host (group scratch): the restore needs one" >&2; exit 1; }

on() {  # host command... (as postgres)
  local host=$1
  shift
  docker exec -u postgres "$prefix$host" "$@"
}
sql() {  # host database query
  on "$1" psql -XAtq -d "$2" -c "$3"
}
seconds() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$@"; }
now() { date +%s.%N; }

leader=""
for i in "${!pg_hosts[@]}"; do
  if docker exec "$prefix${pg_hosts[$i]}" curl -sf -o /dev/null --cacert /etc/neurondb/pki/ca.crt \
      "https://${pg_addresses[$i]}:8008/primary"; then
    leader=${pg_hosts[$i]}
  fi
done
[[ -n "$leader" ]] || { echo "no Patroni leader found" >&2; exit 1; }
runner=${backup_host:-$leader}
stanza=$(on "$leader" sed -n 's/^\[\([^]:]*\)\]$/\1/p' /etc/pgbackrest/pgbackrest.conf | grep -v '^global$' | head -n 1)
pg_bin=/usr/lib/postgresql/17/bin

if ! docker exec "$prefix$scratch_host" test -f /etc/pgbackrest/pgbackrest.conf; then
  echo "preparing the scratch host with a DR drill"
  ansible-playbook -i "$inventory" playbooks/dr-drill.yml >/dev/null
fi

info_json() { on "$runner" pgbackrest --stanza="$stanza" --log-level-file=off --output=json info; }
newest() {  # field of the newest backup: label size delta repo_delta
  info_json | python3 -c '
import json, sys
b = json.load(sys.stdin)[0]["backup"][-1]
print(b["label"], b["info"]["size"], b["info"]["delta"], b["info"]["repository"]["delta"])'
}
mib() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1048576:.0f}')" "$1"; }
rate() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1048576 / max(float(sys.argv[2]), 0.1):.1f}')" "$1" "$2"; }

echo "backup bench: stanza=$stanza leader=$leader runner=$runner scratch=$scratch_host scales=$scales"
echo "archive_timeout=$(sql "$leader" postgres 'SHOW archive_timeout') compression=$(on "$leader" sed -n 's/^compress-type=//p' /etc/pgbackrest/pgbackrest.conf)"

results=()
for scale in $scales; do
  sql "$leader" postgres 'DROP DATABASE IF EXISTS bench' >/dev/null
  sql "$leader" postgres 'CREATE DATABASE bench' >/dev/null
  t0=$(now)
  on "$leader" "$pg_bin/pgbench" -i -q -s "$scale" bench >/dev/null 2>&1
  init_s=$(seconds "$t0" "$(now)")
  cluster_bytes=$(sql "$leader" postgres 'SELECT sum(pg_database_size(oid)) FROM pg_database')

  t0=$(now)
  on "$runner" pgbackrest --stanza="$stanza" --type=full --log-level-console=warn backup
  full_s=$(seconds "$t0" "$(now)")
  read -r full_label full_size _ full_repo < <(newest)

  on "$leader" "$pg_bin/pgbench" -n -T 20 -c 4 bench >/dev/null 2>&1
  t0=$(now)
  on "$runner" pgbackrest --stanza="$stanza" --type=incr --log-level-console=warn backup
  incr_s=$(seconds "$t0" "$(now)")
  read -r _ _ incr_delta incr_repo < <(newest)

  # Restore the full backup on the scratch host, then recover until writable.
  data=/var/lib/postgresql/bench-restore
  docker exec "$prefix$scratch_host" bash -c "
    su postgres -c '$pg_bin/pg_ctl stop -D $data -m immediate' >/dev/null 2>&1 || true
    rm -rf $data && install -d -o postgres -g postgres -m 0700 $data"
  t0=$(now)
  on "$scratch_host" pgbackrest --stanza="$stanza" --set="$full_label" --pg1-path="$data" --type=immediate \
    --target-action=promote --archive-mode=off --log-level-console=warn restore
  t1=$(now)
  on "$scratch_host" "$pg_bin/pg_ctl" start -D "$data" -w -t 3600 -l /tmp/bench-restore.log \
    -o "-c port=5433 -c listen_addresses=localhost -c archive_mode=off -c synchronous_standby_names= \
        -c hba_file=$data/pg_hba.conf -c ident_file=$data/pg_ident.conf" >/dev/null
  until [[ $(on "$scratch_host" psql -XAtq -p 5433 -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null) == f ]]; do
    sleep 0.5
  done
  t2=$(now)
  rows=$(on "$scratch_host" psql -XAtq -p 5433 -d bench -c 'SELECT count(*) FROM pgbench_accounts')
  on "$scratch_host" "$pg_bin/pg_ctl" stop -D "$data" -m fast >/dev/null
  docker exec "$prefix$scratch_host" rm -rf "$data"
  restore_s=$(seconds "$t0" "$t1")
  recovery_s=$(seconds "$t1" "$t2")
  total_s=$(seconds "$t0" "$t2")

  line=$(printf 'scale %-4s cluster %5s MiB | init %6ss | full %6ss %6s MiB/s repo %4s MiB | incr %5ss (%s MiB changed, repo %s MiB) | restore %6ss %6s MiB/s + recovery %5ss = %6ss (%s rows)' \
    "$scale" "$(mib "$cluster_bytes")" "$init_s" "$full_s" "$(rate "$full_size" "$full_s")" "$(mib "$full_repo")" \
    "$incr_s" "$(mib "$incr_delta")" "$(mib "$incr_repo")" "$restore_s" "$(rate "$full_size" "$restore_s")" \
    "$recovery_s" "$total_s" "$rows")
  echo "$line"
  results+=("$line")
done

# Archive lag of a quiet primary: one committed row, then the time until
# pg_stat_archiver reports its segment archived (asynchronous archiving
# reports a segment only once it is in the repository). Bounded by
# archive_timeout plus the push.
sql "$leader" postgres 'CREATE TABLE IF NOT EXISTS bench_rpo (at timestamptz)' >/dev/null
archived() { sql "$leader" postgres "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"; }
for _ in $(seq 1 "$rpo_samples"); do
  wal=$(sql "$leader" postgres "INSERT INTO bench_rpo VALUES (now()) RETURNING pg_walfile_name(pg_current_wal_lsn())" | head -n 1)
  t0=$(now)
  waited=0
  while last=$(archived) && [[ ! "$last" > "$wal" && "$last" != "$wal" ]]; do
    sleep 0.5
    waited=$((waited + 1))
    if ((waited > 1200)); then echo "segment $wal not archived in 600 s"; break; fi
  done
  echo "archive lag: row committed in $wal, archived (in S3) after $(seconds "$t0" "$(now)") s"
done
sql "$leader" postgres 'DROP TABLE bench_rpo' >/dev/null
sql "$leader" postgres 'DROP DATABASE IF EXISTS bench' >/dev/null
echo "summary:"
printf '  %s\n' "${results[@]}"
