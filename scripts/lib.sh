# shellcheck shell=bash
# Shared helpers for scripts/test, scripts/autobahn and the bench scripts. Source it; do not run it.

# Prints a section header.
section() {
    printf '\n==== %s ====\n' "$*"
}

# Installs Debian packages, running `apt-get update` once per script run.
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || {
            echo "need root (or sudo) to install: $*" >&2
            return 1
        }
        sudo=(sudo)
    fi
    if [ -z "${SIGMAVAULT_APT_UPDATED:-}" ]; then
        "${sudo[@]}" apt-get update -qq
        SIGMAVAULT_APT_UPDATED=1
        export SIGMAVAULT_APT_UPDATED
    fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

# Cargo's target directory (honours CARGO_TARGET_DIR), as an absolute path.
target_dir() {
    local dir="${CARGO_TARGET_DIR:-target}"
    case "$dir" in
        /*) printf '%s\n' "$dir" ;;
        *) printf '%s/%s\n' "$(pwd)" "$dir" ;;
    esac
}

# Flags that lift the per-IP/per-user limits of `sigmavault serve` for a load test
# from one machine (tens of thousands of sockets and requests from 127.0.0.1).
# shellcheck disable=SC2034  # used by the scripts that source this file
bench_serve_limits=(--http-rate-limit off --login-rate-limit off --login-user-rate-limit off
    --ws-max-per-ip 0 --ws-max-per-user 0)

# A random password for a throwaway server's first admin (SIGMAVAULT_ADMIN_PASSWORD).
random_password() {
    python3 -c 'import secrets; print(secrets.token_urlsafe(24))'
}

# admin_api_key ADDR PASSWORD: logs in to the server at ADDR (host:port, plain HTTP) as
# `admin` with PASSWORD, creates an admin API key and prints it. The password and the
# access token go through stdin and a header file, never through a command line.
admin_api_key() {
    local addr=$1 password=$2 access headers
    access=$(SV_PASSWORD="$password" python3 -c \
        'import json, os; print(json.dumps({"username": "admin", "password": os.environ["SV_PASSWORD"]}))' |
        curl -fsS --max-time 30 -H 'Content-Type: application/json' --data-binary @- \
            "http://$addr/api/v1/auth/login" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null) || {
        echo "admin_api_key: cannot log in to $addr as admin" >&2
        return 1
    }
    headers=$(mktemp)
    printf 'Authorization: Bearer %s\nContent-Type: application/json\n' "$access" >"$headers"
    curl -fsS --max-time 30 -H "@$headers" --data '{"name":"bench","role":"admin"}' \
        "http://$addr/api/v1/auth/keys" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])' 2>/dev/null || {
        rm -f "$headers"
        echo "admin_api_key: cannot create an API key on $addr" >&2
        return 1
    }
    rm -f "$headers"
}

# rustup installs cargo under ~/.cargo/bin, which a bare CI environment may not have on PATH.
if ! command -v cargo >/dev/null 2>&1; then
    cargo_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
    if [ -x "$cargo_bin/cargo" ]; then
        PATH="$cargo_bin:$PATH"
        export PATH
    fi
fi
