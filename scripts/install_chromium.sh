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
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    fi
    if [ -n "${sudo+set}" ]; then
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
        echo "chromium: $(command -v chromium)"
        exit 0
    fi
fi
msg="Chromium is not installed and cannot be installed here (needs apt-get as root or sudo): install it with the system's package manager for the browser test of glip demo"
if [ "${CI:-}" = true ]; then
    echo "error: $msg" >&2
    exit 1
fi
echo "note: $msg (the test is skipped without it)" >&2
