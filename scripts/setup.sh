#!/usr/bin/env bash
# Creates the repository's Python environment (.venv) for the test oracles and ONNX Runtime,
# installing scripts/requirements.txt, scripts/requirements-models.txt (without dependencies) and,
# with --dev, scripts/requirements-dev.txt. Idempotent: pip runs again only when a requirements
# file changed. Quiet unless something fails.
#
# Prints the variables the tests and the binary use, so that
#   eval "$(bash scripts/setup.sh)"
# prepares the current shell.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument $arg (try --dev)" >&2; exit 2 ;;
    esac
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
fail() { echo "setup.sh: $1 failed:" >&2; cat "$log" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
    py="$(command -v python3.11 || command -v python3 || true)"
    [ -n "$py" ] || { echo "setup.sh: no python3.11 or python3 on PATH" >&2; exit 1; }
    "$py" -m venv "$venv" >"$log" 2>&1 || fail "$py -m venv $venv"
fi

# Installs one requirements file (further arguments go to pip) unless the stamp says this exact
# file is already installed.
install() {
    local name="$1"
    shift
    local req="$root/scripts/$name"
    local stamp="$venv/.skrr-$name.sha256"
    local want
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$venv/bin/python" -m pip install --disable-pip-version-check -q "$@" -r "$req" >"$log" 2>&1 \
            || fail "pip install $* -r scripts/$name"
        echo "$want" >"$stamp"
    fi
}
install requirements.txt
install requirements-models.txt --no-deps
[ "$dev" = 1 ] && install requirements-dev.txt

lib="$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | sort -V | tail -n 1)"
[ -n "$lib" ] || { echo "setup.sh: onnxruntime is installed but libonnxruntime.so.* is missing in $venv" >&2; exit 1; }

echo "export SKRR_PYTHON='$venv/bin/python'"
echo "export ORT_DYLIB_PATH='$lib'"
