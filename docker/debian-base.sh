#!/usr/bin/env bash
# Make the Python base image from Debian packages alone, for builds that cannot pull
# python:3.11-slim-bookworm (an air-gapped site with a Debian mirror; docs/DEPLOY.md §2):
#
#   sudo docker/debian-base.sh [--mirror URL] [--tag simultrain-python:3.11-bookworm]
#   docker build --build-arg PYTHON_IMAGE=simultrain-python:3.11-bookworm ...
#
# debootstrap installs a minimal bookworm with its python3 (3.11), venv and CA certificates;
# `docker import` turns the tree into an image. The tree is kept as a tarball in --cache
# (default build/images/), so a second call makes the image again without the mirror. Needs
# root, debootstrap (apt-get install debootstrap) and a running Docker engine.
set -euo pipefail

readonly PROG="${0##*/}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
tag=simultrain-python:3.11-bookworm
cache="build/images"

usage() {
    cat <<USAGE
usage: $PROG [--mirror URL] [--suite SUITE] [--tag IMAGE] [--cache DIR]
  --mirror URL   Debian mirror (default: \$DEBIAN_MIRROR or http://deb.debian.org/debian)
  --suite NAME   Debian release (default: bookworm, whose python3 is 3.11)
  --tag IMAGE    image to create (default: $tag)
  --cache DIR    where the root-filesystem tarball is kept (default: $cache)
USAGE
}
die() { echo "$PROG: error: $*" >&2; exit 1; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || { usage >&2; die "option $1 needs a value"; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mirror) need_value "$@"; mirror="$2"; shift 2 ;;
        --suite) need_value "$@"; suite="$2"; shift 2 ;;
        --tag) need_value "$@"; tag="$2"; shift 2 ;;
        --cache) need_value "$@"; cache="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

tarball="$cache/debian-$suite-$(dpkg --print-architecture 2>/dev/null || uname -m)-python3.tar"
if [[ ! -s "$tarball" ]]; then
    [[ "$(id -u)" -eq 0 ]] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
    mkdir -p "$cache"
    root="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    echo "$PROG: debootstrap $suite from $mirror"
    debootstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates \
        "$suite" "$root" "$mirror" > "$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    # What an image does not need: package lists and archives, documentation, translations.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi
# The same environment the official python image sets, and the PATH Docker would default to
# (an imported image has no ENV of its own; the Dockerfile extends PATH).
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$tag" > /dev/null
echo "$PROG: $tag from $tarball"
