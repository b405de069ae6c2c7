#!/usr/bin/env bash
# Two-machine `accelerate launch` of glip.train, both "machines" on this host: two launches,
# --machine_rank 0 and 1, meeting over loopback (torch.distributed, gloo, CPU). Checks what a
# multi-node run needs (rendezvous, the sharded sampler, one checkpoint with every rank's RNG
# state, one metrics line per step) in about a minute; on real machines give each its
# --machine_rank and machine 0's --main_process_ip, and put WORK on a shared file system.
#
#   bash scripts/multinode_smoke.sh [WORK]        # default: a temporary folder
#
# `--multi_gpu` is accelerate's multi-process launcher; with `--device cpu` glip trains on
# the CPU (accelerate's `--cpu` with one process per machine starts no process group: each
# machine would train alone).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
PY=${PYTHON:-python}
PORT=${PORT:-29611}
mkdir -p "$WORK" && cd "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
"$PY" -m glip.cli data synthetic --out shapes --num-train 16 --num-val 4 > /dev/null
launch=(-m accelerate.commands.launch --multi_gpu --num_machines 2 --num_processes 2
        --main_process_ip 127.0.0.1 --main_process_port "$PORT" --mixed_precision no --dynamo_backend no)
train=(-m glip.train --config "$REPO/configs/synthetic/tiny.yaml" --out out --device cpu --quiet
       data.train_json=shapes/train.json data.train_images=shapes/images solver.max_iter=6
       solver.ims_per_batch=4 solver.checkpoint_period=3 solver.warmup_iters=1 train.log_period=1)
for rank in 0 1; do
  "$PY" "${launch[@]}" --machine_rank "$rank" "${train[@]}" > "machine$rank.log" 2>&1 &
done
wait
ranks=$(ls out/checkpoints/step_0000006/rng_*.pt | wc -l)
lines=$(grep -c '"step": 6,' out/metrics.jsonl)
echo "checkpoint step 6 holds $ranks ranks' RNG states; metrics.jsonl has $lines line(s) for step 6 (in $WORK)"
[ "$ranks" -eq 2 ] && [ "$lines" -eq 1 ] && [ -f out/model/model.safetensors ] && echo "two-machine launch: ok"
