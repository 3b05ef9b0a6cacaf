#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io when there is
# no engine, and start dockerd by hand where no init system runs it.
set -euo pipefail

if docker info >/dev/null 2>&1; then
  exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing the Docker engine (docker.io)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io iptables
fi
if ! docker info >/dev/null 2>&1; then
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl start docker
  else
    echo "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 &
  fi
fi
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "the Docker engine did not come up; see /var/log/dockerd.log" >&2
exit 1
