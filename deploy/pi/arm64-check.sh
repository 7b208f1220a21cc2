#!/usr/bin/env bash
# The Pi installer on aarch64 without a Pi: an arm64 Debian root under qemu-user
# (docs/DEPLOY.md §4, "Checking on aarch64"). `make arm64-check` runs it; CI does not (it
# downloads an aarch64 torch). Run as root on an x86_64 Debian machine:
#
#   deploy/pi/arm64-check.sh [--torch-index-url URL | --wheelhouse DIR] [--steps N]
#
# 1. qemu-user-static 10 from bookworm-backports (Debian's 7.2 crashes importing torch 2.13:
#    it shows the guest the host's cpuinfo), registered with binfmt_misc for the run, and
#    QEMU_CPU=cortex-a72 (a Pi 4's core);
# 2. an arm64 bookworm root (debootstrap, kept in build/arm64/ for the next run);
# 3. deploy/pi/install-edge.sh inside it, as on a Pi (systemctl stubbed: no systemd runs
#    there), and the size of what it installed;
# 4. when torch installed: a coordinator and a cloud on this machine, and the agent in the
#    arm64 root with the unit's environment, training --steps batches; the cloud's counts.
#
# Where torch cannot be had (these development machines do not reach the PyTorch CPU index),
# it measures the venv without torch and says so; the result goes to --result (JSON).
set -euo pipefail

readonly PROG="${0##*/}"
REPO_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly REPO_DIR
work="$REPO_DIR/build/arm64"
result="$REPO_DIR/deploy/pi/arm64-check.json"
steps=50
install_args=()
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

usage() {
    cat <<USAGE
usage: $PROG [--torch-index-url URL | --wheelhouse DIR] [--steps N] [--result FILE]
  --torch-index-url URL  passed to install-edge.sh (default: its own, the PyTorch CPU index)
  --wheelhouse DIR       passed to install-edge.sh (docker/wheelhouse.sh --platform aarch64)
  --steps N              batches the agent trains against the local services (default $steps)
  --result FILE          where the figures go (default: deploy/pi/arm64-check.json)
USAGE
}
die() { echo "$PROG: error: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --torch-index-url | --wheelhouse)
            [[ $# -ge 2 ]] || die "$1 needs a value"; install_args+=("$1" "$2"); shift 2 ;;
        --steps) [[ $# -ge 2 ]] || die "--steps needs a value"; steps="$2"; shift 2 ;;
        --result) [[ $# -ge 2 ]] || die "--result needs a value"; result="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$(id -u)" -eq 0 ]] || die "run as root (debootstrap, chroot, binfmt_misc)"
[[ "$(uname -m)" == x86_64 ]] || die "meant for an x86_64 host (on aarch64, run install-edge.sh)"

# --- 1. qemu 10 and binfmt_misc ------------------------------------------------------------
if ! qemu-aarch64-static --version 2> /dev/null | grep -qE 'version (9|[1-9][0-9])\.'; then
    sources=/etc/apt/sources.list.d/simultrain-backports.sources
    if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
            "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg > "$sources"
    fi
    apt-get update > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -t bookworm-backports qemu-user-static debootstrap > /dev/null
fi
command -v debootstrap > /dev/null || apt-get install -y --no-install-recommends debootstrap > /dev/null
registered=no
if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [[ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    registered=yes
fi
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2> /dev/null || true; done
    if [[ "$registered" == yes ]]; then echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64; fi
    umount "$root/proc" 2> /dev/null || true
}
trap cleanup EXIT
export QEMU_CPU=cortex-a72
qemu="$(qemu-aarch64-static --version | head -1)"

# --- 2. the arm64 root ---------------------------------------------------------------------
root="$work/root"
if [[ ! -x "$root/usr/bin/python3" ]]; then
    rm -rf "$root"
    mkdir -p "$work"
    echo "$PROG: debootstrap arm64 bookworm (slow under qemu: several minutes)"
    debootstrap --arch arm64 --variant=minbase \
        --include=python3,python3-venv,ca-certificates,hostname \
        bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
        || die "debootstrap failed: $work/debootstrap.log"
fi
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The root trusts what this machine trusts (a TLS-inspecting proxy's CA, where there is one).
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# No systemd runs in a chroot: systemctl records what it was asked instead.
printf '#!/bin/sh\necho "systemctl $*" >> /var/log/systemctl-calls\n' > "$root/usr/local/bin/systemctl"
chmod 755 "$root/usr/local/bin/systemctl"
rm -rf "$root/opt/src" "$root/opt/simultrain" "$root/etc/simultrain" "$root/var/log/systemctl-calls"
mkdir -p "$root/opt/src"
git -C "$REPO_DIR" archive HEAD | tar -x -C "$root/opt/src"
cp "$REPO_DIR/deploy/secrets/enrollment_secret.example" "$root/opt/enrollment_secret"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root \
    QEMU_CPU="$QEMU_CPU" PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$@"; }
echo "$PROG: $(in_root uname -m) root, $qemu, QEMU_CPU=$QEMU_CPU"

# --- 3. the installer, as on a Pi ----------------------------------------------------------
coordinator_port=18700
started=$SECONDS
install_status=0
in_root bash /opt/src/deploy/pi/install-edge.sh \
    --coordinator-url "http://127.0.0.1:$coordinator_port" \
    --enrollment-secret-file /opt/enrollment_secret --shard-index 0 --shard-count 1 \
    --steps "$steps" --name arm64-check --no-start "${install_args[@]}" \
    > "$work/install.log" 2>&1 || install_status=$?
install_s=$((SECONDS - started))
venv_mb="$(du -sm "$root/opt/simultrain/venv" 2> /dev/null | cut -f1 || echo 0)"
torch_note="installed"
if [[ "$install_status" -ne 0 ]]; then
    torch_note="not installed: $(grep -m1 -iE 'error|could not' "$work/install.log" || tail -1 "$work/install.log")"
    echo "$PROG: the installer stopped ($install_status): $torch_note"
    # What can be measured without torch: the venv the installer makes, less torch.
    venv=/opt/simultrain/venv
    in_root python3 /opt/src/docker/pyproject_deps.py /opt/src/pyproject.toml "" > "$root/opt/core.txt"
    in_root "$venv/bin/python" -m pip install --quiet -r /opt/core.txt > "$work/no-torch.log" 2>&1
    in_root "$venv/bin/python" -m pip install --quiet --no-deps /opt/src >> "$work/no-torch.log" 2>&1
    in_root "$venv/bin/python" -m pip install --quiet --no-deps \
        -r /opt/src/docker/dataset-packages.txt >> "$work/no-torch.log" 2>&1
    venv_mb="$(du -sm "$root$venv" | cut -f1)"
fi

# --- 4. a short run against local services -------------------------------------------------
trained="not run (no torch in the arm64 venv)"
if [[ "$install_status" -eq 0 ]]; then
    python="$REPO_DIR/.venv/bin/python"
    # Development mode (no keys): the check is about the agent on aarch64, not about auth.
    SIMULTRAIN_COORDINATOR_PORT=$coordinator_port SIMULTRAIN_COORDINATOR_DB_PATH=":memory:" \
        "$python" -m simultrain.coordinator > "$work/coordinator.log" 2>&1 &
    pids+=($!)
    SIMULTRAIN_CLOUD_PORT=18800 SIMULTRAIN_CLOUD_COORDINATOR_URL="http://127.0.0.1:$coordinator_port" \
        "$python" -m simultrain.cloud > "$work/cloud.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 240); do
        curl -fs http://127.0.0.1:18800/readyz > /dev/null 2>&1 && break
        sleep 1
    done
    # The configuration the installer wrote, as the unit's EnvironmentFile= would give it.
    mapfile -t agent_env < <(grep -E '^SIMULTRAIN_' "$root/etc/simultrain/edge.env")
    started=$SECONDS
    agent_status=0
    in_root env "${agent_env[@]}" \
        SIMULTRAIN_EDGE_ENROLLMENT_SECRET_FILE=/opt/enrollment_secret \
        /opt/simultrain/venv/bin/python -m simultrain.edge > "$work/agent.log" 2>&1 || agent_status=$?
    trained="exit $agent_status after $((SECONDS - started)) s: $(grep -m1 '^DONE ' "$work/agent.log" || echo no DONE line)"
fi

mkdir -p "$(dirname "$result")"
python3 - "$result" <<PY
import json, sys
json.dump({
    "qemu": "$qemu", "qemu_cpu": "$QEMU_CPU", "installer_exit": $install_status,
    "installer_seconds": $install_s, "torch": """$torch_note""",
    "venv_mb": int("$venv_mb" or 0), "venv_includes_torch": $([[ $install_status -eq 0 ]] && echo True || echo False),
    "short_run": """$trained""",
}, open(sys.argv[1], "w"), indent=1)
PY
echo "$PROG: result in $result"
cat "$result"
