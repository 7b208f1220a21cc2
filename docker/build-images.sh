#!/usr/bin/env bash
# Build every SimulTrain image (coordinator, cloud, netem, edge) from docker/Dockerfile, with
# only a Debian mirror and a Python package index or wheelhouse if that is all there is
# (docs/DEPLOY.md §2, "Building without a registry"). `make images` runs it.
#
#   docker/build-images.sh                                # upstream base, PyPI, PyTorch CPU index
#   docker/build-images.sh --wheelhouse build/wheelhouse  # packages from a wheelhouse only
#   docker/build-images.sh --index-url https://pypi.example/simple \
#       --torch-index-url https://pypi.example/torch-cpu/simple
#   docker/build-images.sh ... --save simultrain-images.tar   # one tarball to carry across
#
# The base: the pinned upstream python image when the engine has it or can pull it, otherwise
# one made from Debian packages (docker/debian-base.sh; --base debian forces it). A wheelhouse
# (filled by docker/wheelhouse.sh on a connected machine) is served as a package index on
# 127.0.0.1 for the duration of the build (docker/serve_index.py), and the build steps reach
# it through the host's network (--network host). Each image is built once; the tags are the
# ones docker-compose.yml runs, so `docker compose up` (without --build) starts them.
set -euo pipefail

readonly PROG="${0##*/}"
REPO_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_DIR
readonly UPSTREAM_BASE=python:3.11.13-slim-bookworm
readonly DEBIAN_BASE=simultrain-python:3.11-bookworm
base=auto tag="${SIMULTRAIN_TAG:-0.1.0}" wheelhouse="" index_url="" torch_index_url=""
trusted_host="" save="" stats="" debian_mirror="" targets="coordinator cloud netem edge"
# The wheelhouse's index is served on a fixed port: its URL is a build argument, and a build
# argument that changes invalidates every cached layer after it (torch included).
index_port=3141
python="${PYTHON:-python3}"
no_cache=()

usage() {
    cat <<USAGE
usage: $PROG [options]
  --base auto|upstream|debian  base image (default auto: $UPSTREAM_BASE when the engine has it
                               or can pull it, else $DEBIAN_BASE made by docker/debian-base.sh)
  --debian-mirror URL          Debian mirror for that base (default: deb.debian.org)
  --wheelhouse DIR             take every Python package from DIR (docker/wheelhouse.sh)
  --index-url URL              a package index (mirror) for everything but torch
  --torch-index-url URL        the index torch comes from (default: the --index-url or
                               wheelhouse when given, else the PyTorch CPU index)
  --trusted-host HOST          an http:// mirror's host, for pip
  --tag TAG                    image tag (default: \$SIMULTRAIN_TAG or 0.1.0)
  --targets "T ..."            which images (default: "$targets")
  --no-cache                   rebuild every layer (the first image's build refreshes the
                               cache that the others then reuse: torch is fetched once)
  --save FILE                  also write the images to one tarball (docker load -i FILE)
  --index-port PORT            with --wheelhouse: its port on 127.0.0.1 (default $index_port)
  --index-stats FILE           with --wheelhouse: what the builds asked of it, as JSON
USAGE
}
die() { echo "$PROG: error: $*" >&2; exit 1; }
need_value() { [[ $# -ge 2 && -n "$2" ]] || { usage >&2; die "option $1 needs a value"; }; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) need_value "$@"; base="$2"; shift 2 ;;
        --debian-mirror) need_value "$@"; debian_mirror="$2"; shift 2 ;;
        --wheelhouse) need_value "$@"; wheelhouse="$2"; shift 2 ;;
        --index-url) need_value "$@"; index_url="$2"; shift 2 ;;
        --torch-index-url) need_value "$@"; torch_index_url="$2"; shift 2 ;;
        --trusted-host) need_value "$@"; trusted_host="$2"; shift 2 ;;
        --tag) need_value "$@"; tag="$2"; shift 2 ;;
        --targets) need_value "$@"; targets="$2"; shift 2 ;;
        --save) need_value "$@"; save="$2"; shift 2 ;;
        --no-cache) no_cache=(--no-cache); shift ;;
        --index-port) need_value "$@"; index_port="$2"; shift 2 ;;
        --index-stats) need_value "$@"; stats="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
case "$base" in auto | upstream | debian) ;; *) die "--base must be auto, upstream or debian" ;; esac
[[ -z "$wheelhouse" || -z "$index_url" ]] || die "give --wheelhouse or --index-url, not both"
docker info > /dev/null 2>&1 || die "no Docker engine answers (docker info failed)"
cd "$REPO_DIR"

# --- the base image ------------------------------------------------------------------------
python_image="$UPSTREAM_BASE"
if [[ "$base" != debian ]] && ! docker image inspect "$UPSTREAM_BASE" > /dev/null 2>&1; then
    echo "$PROG: pulling $UPSTREAM_BASE"
    if ! timeout 120 docker pull --quiet "$UPSTREAM_BASE" > /dev/null 2>&1; then
        [[ "$base" == auto ]] || die "cannot pull $UPSTREAM_BASE"
        echo "$PROG: $UPSTREAM_BASE cannot be pulled: making the base from Debian packages"
        base=debian
    fi
fi
if [[ "$base" == debian ]]; then
    python_image="$DEBIAN_BASE"
    if ! docker image inspect "$DEBIAN_BASE" > /dev/null 2>&1; then
        bash docker/debian-base.sh --tag "$DEBIAN_BASE" ${debian_mirror:+--mirror "$debian_mirror"}
    fi
fi

# --- where pip finds packages --------------------------------------------------------------
args=(--build-arg "PYTHON_IMAGE=$python_image" --build-arg "TORCH_SPEC=$(grep -E '^torch==' constraints.txt | head -1)")
network=()
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill -TERM "$server_pid" 2> /dev/null || true
        wait "$server_pid" 2> /dev/null || true
    fi
}
trap cleanup EXIT
if [[ -n "$wheelhouse" ]]; then
    [[ -d "$wheelhouse" ]] || die "no such wheelhouse: $wheelhouse (docker/wheelhouse.sh fills one)"
    log="$(mktemp)"
    "$python" docker/serve_index.py "$wheelhouse" --port "$index_port" \
        ${stats:+--stats "$stats"} > "$log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        grep -q '^LISTENING ' "$log" && break
        kill -0 "$server_pid" 2> /dev/null \
            || { tail -1 "$log" >&2; die "the wheelhouse index did not start (--index-port)"; }
        sleep 0.1
    done
    index_url="$(sed -n 's/^LISTENING //p' "$log")"
    [[ -n "$index_url" ]] || die "the wheelhouse index did not start in 10 s"
    rm -f "$log"
    echo "$PROG: $wheelhouse served at $index_url"
    network=(--network host)  # the build steps reach 127.0.0.1 of this machine
fi
if [[ -n "$index_url" ]]; then
    args+=(--build-arg "PIP_INDEX_URL=$index_url" --build-arg "TORCH_INDEX_URL=${torch_index_url:-$index_url}")
elif [[ -n "$torch_index_url" ]]; then
    args+=(--build-arg "TORCH_INDEX_URL=$torch_index_url")
fi
[[ -z "$trusted_host" ]] || args+=(--build-arg "PIP_TRUSTED_HOST=$trusted_host")

# --- the images ----------------------------------------------------------------------------
images=()
for target in $targets; do
    image="simultrain-$target:$tag"
    started=$SECONDS
    echo "$PROG: building $image (base $python_image)"
    log="$(mktemp)"
    docker build --file docker/Dockerfile --target "$target" --tag "$image" \
        "${no_cache[@]}" "${network[@]}" "${args[@]}" . > "$log" 2>&1 \
        || { tail -30 "$log" >&2; rm -f "$log"; die "building $image failed"; }
    rm -f "$log"
    no_cache=()
    size="$(docker image inspect --format '{{.Size}}' "$image")"
    echo "$PROG: $image: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
    images+=("$image")
done
if [[ -n "$save" ]]; then
    docker save --output "$save" "${images[@]}"
    echo "$PROG: ${images[*]} saved to $save ($(du -h "$save" | cut -f1)); load with: docker load -i $save"
fi
