# shellcheck shell=bash
# Shared helpers for scripts/test and scripts/autobahn. Source it; do not run it.

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

# rustup installs cargo under ~/.cargo/bin, which a bare CI environment may not have on PATH.
if ! command -v cargo >/dev/null 2>&1; then
    cargo_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
    if [ -x "$cargo_bin/cargo" ]; then
        PATH="$cargo_bin:$PATH"
        export PATH
    fi
fi
