#!/usr/bin/env bash
# Recovery figures on the running lab (make lab): runs failover-drill.yml N
# times for each fault and switchover-drill.yml N times, and prints min /
# median / max RTO (for the switchover: the longest stall of the probe's
# writes), failed write attempts and lost writes per fault, plus how long
# PgBouncer held the clients during the switchovers. Prints figures; asserts
# nothing (a run that misses the SLO is still counted, and shown).
#
#   bench/failover.sh [--runs N] [--faults "patroni-stop postgres-crash host-loss network-isolation"]
#                     [--switchovers N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_CONFIG="$PWD/ansible.cfg"

runs=3
switchovers=""
faults="patroni-stop postgres-crash host-loss network-isolation"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --switchovers) switchovers=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

out=$(mktemp -d /tmp/neurondb-bench-failover.XXXXXX)
(
  flock 9
  for fault in $faults; do
    for run in $(seq 1 "$runs"); do
      extra=()
      # In the lab a lost host is a killed container.
      [[ $fault == host-loss ]] && extra=(-e "drill_host_loss_command='docker kill neurondb-lab-{host}'"
                                          -e "drill_host_restore_command='docker start neurondb-lab-{host}'")
      echo "== $fault run $run/$runs"
      ansible-playbook -i inventories/lab/hosts.yml playbooks/failover-drill.yml \
        -e drill_fault="$fault" -e drill_report_dir="$out" -e drill_slo_rto_seconds=1000 "${extra[@]}" \
        >"$out/$fault-$run.log" 2>&1 || echo "   run failed, see $out/$fault-$run.log"
    done
  done
  for run in $(seq 1 "${switchovers:-$runs}"); do
    echo "== switchover run $run/${switchovers:-$runs}"
    # No SLO override: a run with a failed or lost write fails (and is shown).
    ansible-playbook -i inventories/lab/hosts.yml playbooks/switchover-drill.yml -e drill_report_dir="$out" \
      >"$out/switchover-$run.log" 2>&1 || echo "   run failed, see $out/switchover-$run.log"
  done
) 9>/tmp/neurondb-lab.lock

python3 - "$out" <<'PY'
import glob, json, statistics, sys
# <run>-switchover.json is switchover.yml's own report, folded into <run>.json.
paths = [p for p in sorted(glob.glob(f"{sys.argv[1]}/*.json")) if not p.endswith("-switchover.json")]
reports = [json.load(open(p)) for p in paths]
by_fault = {}
for r in reports:
    by_fault.setdefault(r["fault"], []).append(r)
print(f"{'fault':20} {'runs':>4} {'RTO min':>8} {'median':>8} {'max':>8} {'failed':>8} {'lost':>6}")
for fault, rs in by_fault.items():
    rto = [float(r["figures"]["rto_seconds"]) for r in rs if r["figures"]["rto_seconds"] is not None]
    failed = sum(int(r["figures"]["failed_attempts"]) for r in rs)
    lost = sum(int(r["figures"]["lost_writes"]) for r in rs)
    if rto:
        print(f"{fault:20} {len(rs):4} {min(rto):8.2f} {statistics.median(rto):8.2f} {max(rto):8.2f} {failed:8} {lost:6}")
    else:
        print(f"{fault:20} {len(rs):4} {'-':>8} {'-':>8} {'-':>8} {failed:8} {lost:6}")
stalls = [float(r["switchover"]["stall_seconds"]) for r in by_fault.get("switchover", [])
          if r["switchover"].get("stall_seconds") not in (None, "")]
if stalls:
    print(f"switchover: PgBouncer paused min {min(stalls):.2f} s, median {statistics.median(stalls):.2f} s, "
          f"max {max(stalls):.2f} s over {len(stalls)} runs")
print(f"(reports and logs in {sys.argv[1]}; RTO = longest gap between acknowledged writes; "
      "failed = failed probe attempts summed over runs)")
PY
