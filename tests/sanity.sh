#!/usr/bin/env bash
# Run `ansible-test sanity` on the collection's plugins and tests.
#
# ansible-test wants the collection at .../ansible_collections/NAMESPACE/NAME
# and a git work tree, so this copies the files git knows about (tracked, plus
# untracked but not ignored; never collections/, whose symlink points back
# here) into a temporary tree, commits them there, and runs ansible-test in it.
#
# ansible-test itself runs from the project venv (--local); each sanity test
# still gets its own virtualenv with the tool versions ansible-test pins,
# created from PyPI the first time and reused afterwards (~/.ansible/test/venv).
#
# Usage: tests/sanity.sh [extra ansible-test sanity arguments, e.g. --test pylint]
# Environment: ANSIBLE_TEST (default .venv/bin/ansible-test), SANITY_PYTHON (3.11).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ansible_test=${ANSIBLE_TEST:-$repo/.venv/bin/ansible-test}
python_version=${SANITY_PYTHON:-3.11}
# The venv's bin first: ansible-test looks for pythonX.Y on PATH.
PATH="$(dirname "$ansible_test"):$PATH"
export PATH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dest=$work/ansible_collections/neurondb/ha
mkdir -p "$dest"

cd "$repo"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' path; do
    case $path in collections/*) continue ;; esac
    # Deleted but still tracked files are skipped; symlinks are copied as links.
    if [[ -e $path || -L $path ]]; then
      mkdir -p "$dest/$(dirname "$path")"
      cp -P "$path" "$dest/$path"
    fi
  done

cd "$dest"
# validate-modules requires the GPLv3 header of Ansible's own modules; this
# collection is Apache-2.0 (galaxy.yml), and a module only uses BSD-licensed
# module_utils from ansible-core. That one check is ignored, per module, in the
# copy; every other validate-modules check applies.
test_python=$(head -n 1 "$ansible_test" | sed 's/^#! *//')
core_version=$("$test_python" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')
ignore_file=tests/sanity/ignore-$core_version.txt
mkdir -p tests/sanity
for module in plugins/modules/*.py; do
  line="$module validate-modules:missing-gplv3-license"
  grep -qxF "$line" "$ignore_file" 2>/dev/null || echo "$line" >>"$ignore_file"
done

git init -q
git add -A
git -c user.name=sanity -c user.email=sanity@localhost commit -q -m snapshot

# ansible-test bootstraps pip into each sanity virtualenv with a get-pip.py it
# downloads from ci-files.testing.ansible.com, which this network cannot reach
# (only PyPI). Its own error message says to put the script in its cache; when
# none is there, put an equivalent bootstrapper: stdlib ensurepip, then pip
# installs the pinned pip from PyPI, honouring get-pip's --no-setuptools.
site_packages=$("$test_python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')
pip_version=$(sed -n "s/^ *pip='\([0-9.]*\)',\$/\1/p" "$site_packages/_internal/python_requirements.py")
get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
marker="stand-in for get-pip.py written by neurondb.ha tests/sanity.sh"
if [[ -n $pip_version ]] && { [[ ! -e $get_pip ]] || grep -q "$marker" "$get_pip"; }; then
  mkdir -p "$(dirname "$get_pip")"
  # ensurepip runs in a child process: in-process it sets PIP_CONFIG_FILE to
  # /dev/null, which would hide the pip configuration (index, CA) from the
  # install that follows.
  cat >"$get_pip" <<PY
"""A $marker: ensurepip, then pip install ARGS."""
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])
if "--no-setuptools" in sys.argv:
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"])
PY
fi

# Only our Python: roles, playbooks and the lab are linted by ansible-lint.
targets=(plugins/ tests/)
started=$SECONDS
status=0
"$ansible_test" sanity --local --python "$python_version" --color no "$@" "${targets[@]}" || status=$?

# Modules also run on the managed hosts (Debian trixie: Python 3.13), so they
# must at least compile, and import with nothing but ansible-core, there too.
# Interpreters are taken from PATH or, when pyenv has them installed but not
# active, linked into a private bin directory (only pythonX.Y, nothing else).
extra_bin=$work/bin
mkdir -p "$extra_bin"
PATH="$extra_bin:$PATH"
find_python() {
  local version=$1 candidate
  "python$version" -c '' 2>/dev/null && return 0
  command -v pyenv >/dev/null || return 1
  candidate=$(printf '%s\n' "$(pyenv root)/versions/$version".*/bin/"python$version" | sort -V | tail -n 1)
  [[ -x $candidate ]] || return 1
  ln -sf "$candidate" "$extra_bin/python$version"
}
if [[ $# -eq 0 ]]; then
  for version in 3.9 3.10 3.12 3.13; do
    find_python "$version" || { echo "python$version not found: compile test skipped for it"; continue; }
    tests=(--test compile)
    [[ $version == 3.13 ]] && tests+=(--test import)
    "$ansible_test" sanity --local --python "$version" --color no "${tests[@]}" "${targets[@]}" || status=$?
  done
fi
echo "ansible-test sanity finished with status $status in $((SECONDS - started))s"
exit "$status"
