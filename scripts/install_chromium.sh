#!/usr/bin/env bash
# Headless Chromium for the browser test of `glip demo` (tests/tools/test_demo.py): the
# system's package (Debian/Ubuntu `chromium` through apt-get, as root or with `sudo -n`).
# Does nothing when a chromium is already on PATH. Where it cannot install, it says what to
# install and exits 0 (the browser test is then skipped with that reason), except under
# CI=true, where a missing browser is an error: CI must not pass by skipping the test.
set -euo pipefail
for exe in chromium chromium-browser; do
    if command -v "$exe" >/dev/null 2>&1; then
        echo "chromium: $(command -v "$exe")"
        exit 0
    fi
done
# As root, apt-get runs as is; otherwise through a password-less sudo. (A flag, not a test of
# the prefix array: an empty array reads as unset, which took root for "cannot install".)
can_install=false
as_root=()
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        can_install=true
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        can_install=true
        as_root=(sudo -n)
    fi
fi
if [ "$can_install" = true ]; then
    # apt's and dpkg's progress go to a log, shown only when a step fails.
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if ! { "${as_root[@]}" apt-get update -qq &&
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "error: apt-get could not install chromium (the lines above are its last output)" >&2
        exit 1
    fi
    if ! exe="$(command -v chromium)"; then
        echo "error: apt-get installed the chromium package but no chromium is on PATH" >&2
        exit 1
    fi
    echo "chromium: $exe"
    exit 0
fi
msg="Chromium is not installed and cannot be installed here (needs apt-get as root or sudo): install it with the system's package manager for the browser test of glip demo"
if [ "${CI:-}" = true ]; then
    echo "error: $msg" >&2
    exit 1
fi
echo "note: $msg (the test is skipped without it)" >&2
