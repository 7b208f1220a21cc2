#!/usr/bin/env bash
# Install the SimulTrain edge agent as a systemd service on a Raspberry Pi 4 running
# Raspberry Pi OS 64-bit (Debian bookworm, aarch64). Run as root:
#
#   sudo deploy/pi/install-edge.sh \
#       --coordinator-url https://coordinator.simultrain.example.com \
#       --enrollment-secret-file ./enrollment_secret \
#       --shard-index 0 --shard-count 2
#
# It creates a venv in /opt/simultrain/venv, installs torch's CPU build from the PyTorch CPU
# index (PyPI's aarch64 torch is a CUDA build: 60 wheels, ~3 GB, a ~5 GB venv), the edge
# agent (from this repository or from --source, a directory or a wheel) and the datasets'
# files (docker/dataset-packages.txt, without scikit-learn and scipy), writes
# /etc/simultrain/edge.env and the credential /etc/simultrain/enrollment_secret, installs
# simultrain-edge.service and enables it. Offline: --wheelhouse DIR (docker/wheelhouse.sh
# --platform aarch64 fills one) or --torch-index-url and --index-url of a mirror.
# Running it again upgrades in place; the enrollment secret is kept unless a new one is given.
# --dry-run prints every step and writes nothing (no root needed). docs/DEPLOY.md has more.
set -euo pipefail

readonly PROG="${0##*/}"
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd -- "$SCRIPT_DIR/../.." && pwd)"
readonly SCRIPT_DIR REPO_DIR
readonly UNIT_NAME=simultrain-edge.service
# The torch CI tests with (constraints.txt), as a CPU build: the PyTorch CPU index has it for
# aarch64 and x86_64. PyPI's torch for either is a CUDA build (gigabytes a Pi cannot use).
readonly DEFAULT_TORCH_SPEC="torch==2.13.0"
readonly CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu

usage() {
    cat <<USAGE
usage: $PROG --coordinator-url URL --enrollment-secret-file FILE
             --shard-index N --shard-count M [options]

required:
  --coordinator-url URL          coordinator base URL (https://… or http://…)
  --enrollment-secret-file FILE  file holding the enrollment secret ('-' reads stdin);
                                 optional when re-running with one already installed
  --shard-index N                this device's data shard (0 … M-1)
  --shard-count M                number of shards (edges) in the run

options:
  --name NAME                    label the coordinator shows (default: the hostname)
  --steps N                      batches to train, then stop (default 0: until stopped)
  --ca-file FILE                 private CA bundle for the coordinator's and cloud's TLS
  --source PATH                  repository directory or simultrain wheel to install
                                 (default: the repository holding this script)
  --torch-spec SPEC              torch requirement (default: $DEFAULT_TORCH_SPEC)
  --torch-index-url URL          index to take torch from (default: the PyTorch CPU index,
                                 $CPU_TORCH_INDEX; a mirror of it offline)
  --index-url URL                index (PyPI mirror) for everything else (default: pip's)
  --wheelhouse DIR               install from DIR only, no index (docker/wheelhouse.sh
                                 --platform aarch64 fills one on a connected machine)
  --prefix DIR                   install root for the venv (default: /opt/simultrain)
  --config-dir DIR               configuration directory (default: /etc/simultrain)
  --unit-dir DIR                 systemd unit directory (default: /etc/systemd/system)
  --no-start                     install and enable, but do not start now
  --allow-any-arch               install on a machine that is not aarch64
  --dry-run                      print what would be done; change nothing
  -h, --help                     this text
USAGE
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
die_usage() { echo "$PROG: $*" >&2; usage >&2; exit 2; }
note() { echo "==> $*"; }

coordinator_url="" secret_file="" shard_index="" shard_count="" name="" steps="0"
ca_file="" source_path="$REPO_DIR" torch_spec="$DEFAULT_TORCH_SPEC" torch_index_url=""
index_url="" wheelhouse=""
prefix=/opt/simultrain config_dir=/etc/simultrain unit_dir=/etc/systemd/system
start=yes any_arch=no dry_run=no

need_value() { [[ $# -ge 2 && -n "$2" ]] || die_usage "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --coordinator-url) need_value "$@"; coordinator_url="$2"; shift 2 ;;
        --enrollment-secret-file) need_value "$@"; secret_file="$2"; shift 2 ;;
        --shard-index) need_value "$@"; shard_index="$2"; shift 2 ;;
        --shard-count) need_value "$@"; shard_count="$2"; shift 2 ;;
        --name) need_value "$@"; name="$2"; shift 2 ;;
        --steps) need_value "$@"; steps="$2"; shift 2 ;;
        --ca-file) need_value "$@"; ca_file="$2"; shift 2 ;;
        --source) need_value "$@"; source_path="$2"; shift 2 ;;
        --torch-spec) need_value "$@"; torch_spec="$2"; shift 2 ;;
        --torch-index-url) need_value "$@"; torch_index_url="$2"; shift 2 ;;
        --index-url) need_value "$@"; index_url="$2"; shift 2 ;;
        --wheelhouse) need_value "$@"; wheelhouse="$2"; shift 2 ;;
        --prefix) need_value "$@"; prefix="$2"; shift 2 ;;
        --config-dir) need_value "$@"; config_dir="$2"; shift 2 ;;
        --unit-dir) need_value "$@"; unit_dir="$2"; shift 2 ;;
        --no-start) start=no; shift ;;
        --allow-any-arch) any_arch=yes; shift ;;
        --dry-run) dry_run=yes; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die_usage "unknown argument: $1" ;;
    esac
done

# --- arguments ---------------------------------------------------------------------------
[[ -n "$coordinator_url" ]] || die_usage "--coordinator-url is required"
[[ "$coordinator_url" =~ ^https?://[^[:space:]]+$ ]] \
    || die_usage "--coordinator-url must be an http:// or https:// URL"
[[ "$shard_index" =~ ^[0-9]+$ ]] || die_usage "--shard-index must be a number"
[[ "$shard_count" =~ ^[1-9][0-9]*$ ]] || die_usage "--shard-count must be a positive number"
(( shard_index < shard_count )) || die_usage "--shard-index must be below --shard-count"
[[ "$steps" =~ ^[0-9]+$ ]] || die_usage "--steps must be a number"
[[ -z "$name" ]] && name="$(hostname 2>/dev/null || echo edge)"
[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--name may hold only letters, digits, . _ -"
[[ -z "$ca_file" || -r "$ca_file" ]] || die "cannot read --ca-file $ca_file"
[[ -e "$source_path" ]] || die "no such --source: $source_path"
if [[ -d "$source_path" && ! -f "$source_path/pyproject.toml" ]]; then
    die "--source $source_path is not the SimulTrain repository (no pyproject.toml)"
fi
[[ -z "$wheelhouse" || -d "$wheelhouse" ]] || die "no such --wheelhouse: $wheelhouse"
[[ -z "$wheelhouse" || ( -z "$torch_index_url" && -z "$index_url" ) ]] \
    || die_usage "--wheelhouse takes every package from the folder: no --index-url with it"
datasets="$REPO_DIR/docker/dataset-packages.txt"
[[ -f "$datasets" ]] || die "dataset package list not found: $datasets"

venv="$prefix/venv"
env_file="$config_dir/edge.env"
secret_target="$config_dir/enrollment_secret"
unit_source="$REPO_DIR/deploy/systemd/$UNIT_NAME"
[[ -f "$unit_source" ]] || die "unit file not found: $unit_source"

secret=""
if [[ -n "$secret_file" ]]; then
    if [[ "$secret_file" == "-" ]]; then
        IFS= read -r secret || true
    else
        [[ -r "$secret_file" ]] || die "cannot read --enrollment-secret-file $secret_file"
        IFS= read -r secret < "$secret_file" || true
    fi
    [[ -n "$secret" ]] || die "the enrollment secret is empty"
elif [[ ! -s "$secret_target" && "$dry_run" == no ]]; then
    die_usage "--enrollment-secret-file is required (none installed yet at $secret_target)"
fi

# --- steps, printed before they run; in --dry-run only printed --------------------------
run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "$dry_run" == no ]]; then
        "$@"
    fi
}

# write_file MODE PATH SHOWN: content from stdin. SHOWN is "all", "no" (a secret) or an
# extended regular expression selecting the lines worth showing.
write_file() {
    local mode="$1" path="$2" shown="$3" content line
    content="$(cat)"
    echo "+ write $path (mode $mode)"
    if [[ "$shown" == no ]]; then
        echo "|   (secret, not shown)"
    else
        while IFS= read -r line; do
            if [[ "$shown" == all || "$line" =~ $shown ]]; then
                printf '|   %s\n' "$line"
            fi
        done <<<"$content"
        [[ "$shown" == all ]] || echo "|   …"
    fi
    if [[ "$dry_run" == no ]]; then
        local tmp
        tmp="$(mktemp "$path.XXXXXX")"
        printf '%s\n' "$content" > "$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$path"
    fi
}

# --- the machine -------------------------------------------------------------------------
note "checking the machine"
arch="$(uname -m)"
if [[ "$arch" != aarch64 ]]; then
    if [[ "$any_arch" == yes ]]; then
        echo "warning: $arch is not aarch64; installing anyway (--allow-any-arch)" >&2
    elif [[ "$dry_run" == yes ]]; then
        echo "warning: $arch is not aarch64: a real run would stop here" >&2
        echo "         (Raspberry Pi OS 64-bit reports aarch64; --allow-any-arch overrides)" >&2
    else
        die "this is $arch; the edge agent targets 64-bit Raspberry Pi OS (aarch64). A 32-bit OS \
(armv7l) has no torch wheels: install the 64-bit image. --allow-any-arch overrides."
    fi
fi
if [[ "$dry_run" == no && "$(id -u)" -ne 0 ]]; then
    die "run as root (sudo), or try --dry-run first"
fi
command -v systemctl >/dev/null 2>&1 || [[ "$dry_run" == yes ]] \
    || die "systemctl not found: this script installs a systemd service"
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$(command -v "$candidate")"
        break
    fi
done
if [[ -z "$python" ]]; then
    [[ "$dry_run" == yes ]] || die "Python 3.11 or newer is required (Raspberry Pi OS bookworm has 3.11)"
    python=python3
    echo "warning: no Python 3.11 or newer found: a real run would stop here" >&2
fi
echo "python: $python; arch: $arch; source: $source_path"

# Debian splits venv out of the interpreter package.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    run apt-get update
    run apt-get install -y python3-venv
fi

# --- the venv: torch first (the big one), then the agent ----------------------------------
note "installing into $venv"
run install -d -m 0755 "$prefix"
if [[ ! -x "$venv/bin/python" ]]; then
    run "$python" -m venv "$venv"
fi
# Where pip finds packages: a wheelhouse alone, or the indexes given (pip's own by default).
if [[ -n "$wheelhouse" ]]; then
    from_index=(--no-index --find-links "$wheelhouse")
    torch_from=("${from_index[@]}")
else
    from_index=(${index_url:+--index-url "$index_url"})
    # torch's CPU build (and its dependencies) from the PyTorch CPU index or its mirror.
    torch_from=(--index-url "${torch_index_url:-$CPU_TORCH_INDEX}")
fi
run "$venv/bin/python" -m pip install "${from_index[@]}" --upgrade pip
run "$venv/bin/python" -m pip install "${torch_from[@]}" "$torch_spec"
# The agent with its core dependencies, then the datasets' files without their dependencies
# (shared/data reads the files by path: no scikit-learn, scipy or pandas on the Pi).
run "$venv/bin/python" -m pip install "${from_index[@]}" "$source_path"
run "$venv/bin/python" -m pip install "${from_index[@]}" --no-deps -r "$datasets"
# The installed agent must import (its settings class is what edge.env feeds).
run "$venv/bin/python" -c "import simultrain.edge.settings, torch; print('torch', torch.__version__)"

# --- configuration -------------------------------------------------------------------------
note "writing the configuration in $config_dir"
run install -d -m 0755 "$config_dir"
{
    echo "# Written by $PROG on $(date -u +%Y-%m-%dT%H:%M:%SZ); edit, then: systemctl restart simultrain-edge"
    echo "# Variables: deploy/systemd/simultrain-edge.env.example. The enrollment secret is in"
    echo "# $secret_target, not here."
    echo "SIMULTRAIN_EDGE_COORDINATOR_URL=$coordinator_url"
    echo "SIMULTRAIN_EDGE_SHARD_INDEX=$shard_index"
    echo "SIMULTRAIN_EDGE_SHARD_COUNT=$shard_count"
    echo "SIMULTRAIN_EDGE_NAME=$name"
    echo "SIMULTRAIN_EDGE_STEPS=$steps"
    echo "SIMULTRAIN_EDGE_COMPUTE_THREADS=3"
    if [[ -n "$ca_file" ]]; then
        echo "SIMULTRAIN_EDGE_CA_FILE=$config_dir/ca.pem"
    fi
} | write_file 0644 "$env_file" all
if [[ -n "$ca_file" ]]; then
    run install -m 0644 "$ca_file" "$config_dir/ca.pem"
fi
if [[ -n "$secret" ]]; then
    # Read by systemd (LoadCredential=) and handed to the service alone: root-only here.
    printf '%s\n' "$secret" | write_file 0600 "$secret_target" no
fi

# --- the service ---------------------------------------------------------------------------
note "installing $UNIT_NAME"
run install -d -m 0755 "$unit_dir"
unit="$(sed "s|^ExecStart=/opt/simultrain/venv/bin/python |ExecStart=$venv/bin/python |; \
s|^EnvironmentFile=/etc/simultrain/edge.env\$|EnvironmentFile=$env_file|; \
s|^LoadCredential=enrollment_secret:/etc/simultrain/enrollment_secret\$|LoadCredential=enrollment_secret:$secret_target|" \
    "$unit_source")"
write_file 0644 "$unit_dir/$UNIT_NAME" '^(ExecStart|EnvironmentFile|LoadCredential)=' <<<"$unit"
if command -v systemd-analyze >/dev/null 2>&1 && [[ "$dry_run" == no ]]; then
    run systemd-analyze verify "$unit_dir/$UNIT_NAME"
fi
run systemctl daemon-reload
run systemctl enable "$UNIT_NAME"
if [[ "$start" == yes ]]; then
    run systemctl restart "$UNIT_NAME"
fi

note "done"
cat <<DONE
Check it:
  systemctl status simultrain-edge          # active (running), "streaming to the cloud"
  journalctl -u simultrain-edge -f          # the agent's log
  cat /var/lib/simultrain-edge/status.json  # progress after every acknowledged batch
The agent's durable state (identity, data position, batches not yet durable in the cloud) is
/var/lib/simultrain-edge/state: a power cut loses nothing. Delete it only to enroll this
device as a new edge; then the batches it still held are lost.
DONE
if [[ "$dry_run" == yes ]]; then
    echo "(dry run: nothing was changed)"
fi
