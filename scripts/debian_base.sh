#!/usr/bin/env bash
# The images' base, debian:bookworm-slim, made here from Debian's archive when no registry can hand it out.
#   scripts/debian_base.sh ENGINE IMAGE       e.g. scripts/debian_base.sh podman localhost/debian:bookworm-slim
# The official debian:bookworm-slim is itself such a build (debuerreotype: a minbase debootstrap with the
# same three suites and without docs and man pages), so an image built FROM this one is what an image built
# FROM the official one would be, up to the day the archive was read. mmdebstrap runs as root and needs no
# network but the archive's; it is installed from Debian when missing.
set -euo pipefail
engine=${1:?usage: debian_base.sh ENGINE IMAGE}
image=${2:?usage: debian_base.sh ENGINE IMAGE}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if ! command -v mmdebstrap >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap
fi
tarball=$(mktemp --suffix=.tar)
trap 'rm -f "$tarball"' EXIT
# --dpkgopt lines are the slim variant's: they stay in the image, so packages installed later skip docs too.
# The merged-usr hook lays out /usr as debootstrap does, without the usrmerge package (and the perl it pulls).
# shellcheck disable=SC2016  # "$1" in the hook is mmdebstrap's to expand (the root being built)
nice -n 10 mmdebstrap --variant=minbase --quiet \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --aptopt='Acquire::Languages "none"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
  bookworm "$tarball" \
  "deb $mirror bookworm main" \
  "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"
"$engine" import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
echo "$image: built from $mirror with mmdebstrap ($(du -h "$tarball" | cut -f1) tarball)"
