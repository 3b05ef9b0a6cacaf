#!/usr/bin/env bash
# Build the lab's Debian 13 (trixie) systemd host image without a registry:
# debootstrap a root file system, pre-fetch the stack's .deb files so that a
# converge installs from the local cache instead of the network, and import
# the tree with `docker import`. Reused when the image already exists.
set -euo pipefail

IMAGE="${NEURONDB_LAB_IMAGE:-neurondb-lab:trixie}"
MIRROR="${NEURONDB_LAB_MIRROR:-http://deb.debian.org/debian}"
FORCE="${1:-}"

# The image carries the checksum of this script: a changed package list (or
# any other change of the recipe) rebuilds it, so a machine that kept an old
# image still tests what the recipe says.
RECIPE=$(sha256sum "$0" | cut -c1-16)
if [[ "$FORCE" != "--force" ]] &&
   [[ "$(docker image inspect -f '{{ index .Config.Labels "neurondb.recipe" }}' "$IMAGE" 2>/dev/null)" == "$RECIPE" ]]; then
  echo "lab image $IMAGE is up to date; reusing it (pass --force to rebuild)"
  exit 0
fi

command -v debootstrap >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
}

# Installed in the image: what every host needs before Ansible can manage it.
BASE_PACKAGES=python3,python3-apt,systemd,systemd-sysv,dbus,iproute2,iputils-ping,procps,ca-certificates,curl,sudo,acl,locales,less,nftables,gnupg
# Only downloaded into the apt cache: the roles install these themselves (and
# the ssh scenario's prepare, openssh-server), so the install path is
# exercised, but from a local cache (fast and offline-tolerant).
CACHED_PACKAGES="postgresql-17 postgresql-17-pgvector postgresql-client-17 patroni python3-psycopg2 python3-psycopg \
etcd-server etcd-client haproxy pgbouncer nginx pgbackrest python3-boto3 python3-moto \
prometheus-postgres-exporter python3-cryptography postgresql-contrib \
nodejs postgresql-17-cron openssh-server"

ROOT="$(mktemp -d /var/tmp/neurondb-lab-rootfs.XXXXXX)"
trap 'rm -rf --one-file-system "$ROOT"' EXIT

echo "debootstrap trixie into $ROOT"
debootstrap --variant=minbase --include="$BASE_PACKAGES" trixie "$ROOT" "$MIRROR"

cat > "$ROOT/etc/apt/sources.list" <<SRC
deb $MIRROR trixie main
deb $MIRROR trixie-updates main
deb http://deb.debian.org/debian-security trixie-security main
SRC
# Keep downloaded packages so the cache survives installs inside the image.
echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > "$ROOT/etc/apt/apt.conf.d/01keep-debs"
chroot "$ROOT" apt-get update -q
# shellcheck disable=SC2086
chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only $CACHED_PACKAGES

# The lab starts containers with --stop-signal SIGRTMIN+3 so systemd shuts down cleanly.
# A container is not a machine: no getty, no udev, no time sync of its own.
for unit in getty@tty1.service console-getty.service systemd-udevd.service \
            systemd-timesyncd.service systemd-resolved.service; do
  chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
echo 'en_US.UTF-8 UTF-8' > "$ROOT/etc/locale.gen"
chroot "$ROOT" locale-gen >/dev/null
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/etc/hostname"

echo "importing $IMAGE"
tar -C "$ROOT" -c . | docker import \
  --change 'ENV container=docker' \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change "LABEL neurondb.recipe=$RECIPE" \
  - "$IMAGE"
echo "built $IMAGE"
