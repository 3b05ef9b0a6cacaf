#!/usr/bin/env bash
# The test suite: `make test` (README) and CI (.ci/run) both run this.
#   tests/run.sh            every suite
#   tests/run.sh lint unit  only those suites (lint, unit, sanity, molecule)
# Installs what it needs: the Docker engine, the lab image, the venv.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
# Random secrets for the Molecule scenarios' throw-away clusters.
NEURONDB_TEST_SEED="${NEURONDB_TEST_SEED:-$(head -c 12 /dev/urandom | base64 | tr -d '/+=')}"
export NEURONDB_TEST_SEED

suites=("$@")
[[ ${#suites[@]} -eq 0 ]] && suites=(lint unit sanity molecule)

passed=0
failed=0
failed_names=()

run_suite() {
  local name=$1
  shift
  local start
  start=$(date +%s)
  echo "=== $name"
  if "$@"; then
    passed=$((passed + 1))
    echo "=== $name: passed in $(( $(date +%s) - start )) s"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "=== $name: FAILED in $(( $(date +%s) - start )) s"
  fi
}

lint() {
  yamllint --strict . &&
    ansible-lint --profile production &&
    ruff check . &&
    ruff format --check .
}

unit() {
  # The reference services' tests run against a real PostgreSQL server of
  # the controller's own (they skip without one: make sure there is one).
  # PgBouncer (the transaction-pool and dropped-search_path tests) and Node.js
  # (the frontend's next start) too; those tests skip without them.
  local wanted=()
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || wanted+=(postgresql)
  command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || wanted+=(pgbouncer)
  command -v node >/dev/null || wanted+=(nodejs)
  if [[ ${#wanted[@]} -gt 0 ]]; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${wanted[@]}" >/dev/null
  fi
  pytest tests/unit -q
}

sanity() {
  bash tests/sanity.sh
}

molecule_scenarios() {
  bash lab/docker.sh && bash lab/build-image.sh || return 1
  # default: the whole topology (converge, idempotence, checks, modules, app
  # artifacts); drill: every fault and the switchover under a write probe;
  # backup: pgBackRest to S3, point-in-time restore, the DR drill. Each has
  # its own containers and network, so they run side by side: much of a
  # scenario is waiting (Patroni's ttl, a drill's baseline, a restore's
  # recovery), which the others fill. NEURONDB_MOLECULE_PARALLEL=0 runs them
  # one after the other.
  local scenarios=(${NEURONDB_MOLECULE_SCENARIOS:-default drill backup})
  local logs rc=0 scenario i
  logs=$(mktemp -d /tmp/neurondb-molecule.XXXXXX)
  local -A pids=() status=()
  if [[ ${NEURONDB_MOLECULE_PARALLEL:-1} == 1 ]]; then
    # Ctrl-C or a CI timeout stops every scenario (background jobs of a
    # script ignore SIGINT by themselves).
    trap 'for p in "${pids[@]}"; do pkill -TERM -P "$p"; kill "$p"; done 2>/dev/null; exit 130' INT TERM
    for i in "${!scenarios[@]}"; do
      # Staggered: their first minutes (docker create, apt) are the heaviest.
      [[ $i -gt 0 ]] && sleep 20
      run_scenario "${scenarios[$i]}" "$logs" &
      pids[${scenarios[$i]}]=$!
    done
    for scenario in "${scenarios[@]}"; do
      wait "${pids[$scenario]}"
      status[$scenario]=$?
    done
    trap - INT TERM
  else
    for scenario in "${scenarios[@]}"; do
      run_scenario "$scenario" "$logs"
      status[$scenario]=$?
    done
  fi
  for scenario in "${scenarios[@]}"; do
    if [[ ${status[$scenario]} -ne 0 ]]; then
      rc=1
      echo "--- molecule scenario $scenario FAILED (exit ${status[$scenario]}); its whole log:"
      cat "$logs/$scenario.log"
    else
      echo "--- molecule scenario $scenario passed; the end of its log:"
      tail -n 40 "$logs/$scenario.log"
    fi
  done
  cat "$logs"/*.time 2>/dev/null
  return $rc
}

run_scenario() {  # scenario logdir
  local start rc
  start=$(date +%s)
  molecule test -s "$1" >"$2/$1.log" 2>&1
  rc=$?
  echo "molecule scenario $1: $([[ $rc -eq 0 ]] && echo passed || echo "FAILED (exit $rc)") in $(( $(date +%s) - start )) s" |
    tee "$2/$1.time"
  return $rc
}

bash lab/venv.sh || { echo "could not prepare the Python environment"; exit 1; }

for suite in "${suites[@]}"; do
  case "$suite" in
    lint) run_suite lint lint ;;
    unit) run_suite unit unit ;;
    sanity) run_suite sanity sanity ;;
    molecule) run_suite molecule molecule_scenarios ;;
    *) echo "unknown suite: $suite (lint, unit, sanity, molecule)"; exit 2 ;;
  esac
done

[[ $failed -gt 0 ]] && echo "failed suites: ${failed_names[*]}"
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
