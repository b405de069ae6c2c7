#!/usr/bin/env bash
# Prepares scripts/bench_gpu.py for a lent GPU machine that reaches no network (the device
# tool of this project's sessions): the wheels of glip's dependencies its image lacks
# (omegaconf, and antlr4 which omegaconf needs) go to .whl/, the official tiny fixtures to
# .fixtures/ (both kept out of git through .git/info/exclude), and the command to run there
# is printed. Costs no device time; run it here, then hand the printed command to the device
# with carry [".whl", ".fixtures"] (about 50 MiB).
#
#     bash scripts/prepare_gpu_check.sh [FIXTURES_DIR]   # default ../shared/fixtures
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures="${1:-../shared/fixtures}"
python="${PYTHON:-python3}"
for entry in /.whl/ /.fixtures/; do
    grep -qxF "$entry" .git/info/exclude 2>/dev/null || echo "$entry" >>.git/info/exclude
done
rm -rf .whl && mkdir -p .whl
# The device image runs CPython 3.12 on x86_64; omegaconf ships a universal wheel, antlr4
# 4.9.3 (the version omegaconf 2.3 pins) only an sdist, built here (pure Python).
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .whl omegaconf==2.3.0
"$python" -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl
if [ -d "$fixtures/official/tiny_glip_t" ]; then
    rm -rf .fixtures && mkdir -p .fixtures/official
    cp -r "$fixtures/official/tiny_glip_t" .fixtures/official/
    with_fixtures="--fixtures .fixtures"
else
    echo "note: no $fixtures/official/tiny_glip_t: the run leaves out the official-parity section" >&2
    with_fixtures=""
fi
echo "prepared: $(du -sh .whl | cut -f1) of wheels ($(ls .whl | tr '\n' ' '))${with_fixtures:+, $(du -sh .fixtures | cut -f1) of fixtures}"
echo "device command (carry: [\".whl\", \".fixtures\"]):"
echo "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1 && python3 scripts/bench_gpu.py $with_fixtures --out \$OUT/gpu.json 2>&1 | tee \$OUT/log"
