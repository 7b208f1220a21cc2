#!/bin/sh
# Write random keys for docker compose (and for a first Kubernetes install) into this
# directory: enrollment_secret, token_key, admin_token. Existing files are kept unless
# --force is given. The *.example files beside this script show the format: one line each.
#
#   sh deploy/secrets/generate.sh [--force]
#
# Compose mounts each file into the containers (a bind mount, so the file's own mode is what
# the container's unprivileged user sees): the files are world-readable and the directory is
# closed to other users of this machine instead. Never commit them (.gitignore here).
set -eu

dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
force=no
case "${1:-}" in
    --force) force=yes ;;
    "") ;;
    *) echo "usage: sh $0 [--force]" >&2; exit 2 ;;
esac

random_key() {
    # 48 random bytes, URL-safe base64: 64 characters, above the 32-byte minimum of token_key.
    if command -v openssl >/dev/null 2>&1; then
        openssl rand -base64 48 | tr '+/' '-_' | tr -d '=\n'
    else
        python3 -c 'import secrets; print(secrets.token_urlsafe(48), end="")'
    fi
}

chmod 0700 "$dir"
for name in enrollment_secret token_key admin_token; do
    target="$dir/$name"
    if [ -e "$target" ] && [ "$force" = no ]; then
        echo "kept $target (use --force to replace it)"
        continue
    fi
    (umask 022 && random_key > "$target.tmp" && echo >> "$target.tmp")
    chmod 0644 "$target.tmp"
    mv "$target.tmp" "$target"
    echo "wrote $target"
done
