"""Train the bundled demo model (``demo-shapes``) from scratch: every stage, in order, on the CPU.

    python scripts/make_demo.py --work runs/make-demo --out runs/make-demo/demo-shapes
    python scripts/make_demo.py --work runs/make-demo --dry-run      # the commands, nothing run

The stages (each a run of ``scripts/train_demo.py`` or ``scripts/train_demo_vl.py``; the
settings are those of the shipped model's stages, docs/demo-model.md, in fewer runs):

1. ``detector``: ``train_demo.py``: the visual pre-training, grounding on the held-out set,
   the mask head (all threads).
2. ``trunk``: the all-classes stage with the fusion's text path trained (0.3 of the base
   rate), word-sharing negatives and the grounded captions at weight 2: the shipped model's
   binding and all-classes stages in one run (all threads).
3. ``answer`` and ``caption``, side by side on the frozen trunk (half the threads each): the
   answer head alone on the questions (reading the text encoder's slot feature, with the
   counter), and the caption head alone on the all-classes set's captions (reading the text
   encoder, with its causal context).
4. ``final``: the trunk with both heads, beam 5 re-ranked contrastively, the test size and
   the calibration of ``train_demo_vl.py``'s defaults, saved to ``--out``.

Every stage writes a zoo folder under ``--work``; a stage whose folder is complete is
skipped, and an interrupted one resumes from its last checkpoint, so running the same
command again after a stop (Ctrl-C, a killed job) loses at most a checkpoint period (a
quarter of the stage's steps), or the visual pre-training (``train_demo.py``'s first
minutes, not checkpointed) when it stops there.
Each stage's output goes to ``WORK/<stage>.log``; the minutes of each stage go to
``WORK/recipe.json`` (wall time, side-by-side stages as one). ``scripts/eval_demo.py --model OUT`` measures the result.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


@dataclass(frozen=True)
class Stage:
    """One run of the recipe: its name, its command line and the zoo folder it writes."""

    name: str
    argv: tuple[str, ...]
    output: Path
    threads: int

    def done(self) -> bool:
        """Whether the stage's zoo folder is complete (a rerun skips it)."""
        return (self.output / "model.safetensors").is_file() and (self.output / "config.yaml").is_file()


def plan(args: argparse.Namespace) -> list[list[Stage]]:
    """The recipe's stages in order; the stages of one inner list run side by side."""
    work, py = Path(args.work), sys.executable
    threads = max(1, args.threads)
    half = max(1, threads // 2)

    def vl(name: str, start: Stage, threads: int, *options: str, out: Path | None = None) -> Stage:
        """A ``train_demo_vl.py`` stage from ``start``'s folder, writing ``out`` (WORK/name/zoo)."""
        out = out or work / name / "zoo"
        argv = (py, str(SCRIPTS / "train_demo_vl.py"), "--bind-steps", "0", "--no-eval", "--seed", str(args.seed),
                "--work", str(work / name), "--from", str(start.output), "--out", str(out),
                "--threads", str(threads), *options)  # fmt: skip
        return Stage(name, argv, out, threads)

    detector = Stage(
        "detector",
        (py, str(SCRIPTS / "train_demo.py"), "--work", str(work / "detector"), "--out", str(work / "detector" / "zoo"),
         "--probe-every", "0", "--seed", str(args.seed)),
        work / "detector" / "zoo", threads,
    )  # fmt: skip
    trunk = vl(
        "trunk", detector, threads,
        "--steps", "0", "--all-classes-steps", str(args.trunk_steps), "--all-classes-fusion-lr-factor", "0.3",
        "--grounded-captions", "2", "--no-calibrate",
    )  # fmt: skip
    answer = vl(
        "answer", trunk, half,
        "--all-classes-steps", "0", "--no-calibrate", "--steps", str(args.answer_steps), "--source-weights", "0", "1", "0",
        "train.tuning=vqa", "model.heads.vqa.counter_dim=64", "model.heads.vqa.text_source=encoder",
    )  # fmt: skip
    caption = vl(
        "caption", trunk, half,
        "--all-classes-steps", "0", "--no-calibrate", "--steps", str(args.caption_steps), "--source-weights", "0", "0", "1",
        "--caption-data", "all-classes",
        "train.tuning=caption", "model.heads.vqa.enabled=false", "model.heads.caption.text_source=encoder",
        "model.heads.caption.mask_prob=0.3", "model.heads.caption.max_masked=6",
    )  # fmt: skip
    final = vl(
        "final", trunk, threads,
        "--heads-from", str(answer.output), "--caption-from", str(caption.output), "--steps", "0",
        "--all-classes-steps", "0", "--caption-beam", "5", "--caption-rerank", "contrastive",
        out=Path(args.out),
    )  # fmt: skip
    return [[detector], [trunk], [answer, caption], [final]]


def run_group(group: list[Stage], work: Path) -> tuple[list[int], float]:
    """Runs the stages of ``group`` side by side (each with its own thread count and log);
    their exit codes and the group's wall time in minutes. Ctrl-C or SIGTERM is passed on to
    the stages, which write a resumable checkpoint before they stop."""
    procs = []
    for stage in group:
        env = {**os.environ, "OMP_NUM_THREADS": str(stage.threads), "HF_HUB_OFFLINE": "1"}
        log = open(work / f"{stage.name}.log", "a")
        print(f"[{time.strftime('%H:%M:%S')}] {stage.name}: started ({stage.threads} threads, log {log.name})")
        procs.append((subprocess.Popen(stage.argv, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    begin = time.time()
    previous = signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p, _ in procs])
    try:
        codes = []
        for proc, log in procs:
            while True:
                try:
                    codes.append(proc.wait())
                    break
                except KeyboardInterrupt:  # the stages got the terminal's SIGINT too; let them save
                    print("interrupted: waiting for the stages to write their checkpoints")
            log.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return codes, (time.time() - begin) / 60


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/make-demo", help="every stage's data, checkpoints, logs and zoo folder")
    p.add_argument("--out", help="the finished zoo folder (default: WORK/demo-shapes)")
    p.add_argument("--seed", type=int, default=0, help="the demo's data seed")
    p.add_argument("--trunk-steps", type=int, default=2000, help="steps of the trunk stage")
    p.add_argument("--answer-steps", type=int, default=4000, help="steps of the answer head")
    p.add_argument("--caption-steps", type=int, default=6000, help="steps of the caption head")
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="threads of the whole recipe")
    p.add_argument("--dry-run", action="store_true", help="print the stages' commands and whether each is done")
    args = p.parse_args()
    args.out = args.out or str(Path(args.work) / "demo-shapes")
    work = Path(args.work)
    groups = plan(args)
    if args.dry_run:
        for group in groups:
            for stage in group:
                state = "done" if stage.done() else "to run"
                print(f"# {stage.name} ({state}, {stage.threads} threads)\n{' '.join(stage.argv)}")
        return 0
    work.mkdir(parents=True, exist_ok=True)
    record = work / "recipe.json"
    minutes = json.loads(record.read_text()) if record.is_file() else {}
    for group in groups:
        todo = [s for s in group if not s.done()]
        for stage in group:
            if stage not in todo:
                print(f"{stage.name}: done ({stage.output})")
        if not todo:
            continue
        codes, took = run_group(todo, work)
        key = "+".join(s.name for s in todo)  # side by side: one wall time for the group
        minutes[key] = minutes.get(key, 0.0) + took
        record.write_text(json.dumps(minutes, indent=1))
        for stage, code in zip(todo, codes):
            if code != 0:
                # The last lines of the log, a progress bar's redraws (``\r``) reduced to the last.
                with open(work / f"{stage.name}.log", newline="", errors="replace") as f:  # keep the \r
                    text = f.read()
                tail = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.strip()][-5:]
                print(f"{stage.name} stopped (exit {code}); run the same command again to resume. Its log ends:")
                print("\n".join(f"  {line}" for line in tail))
                return 1
        print(f"[{time.strftime('%H:%M:%S')}] {key}: finished ({took:.1f} min)")
    total = sum(minutes.values())
    print(f"demo model written to {args.out}; {total:.1f} min of wall time in all ({record})")
    print(f"measure it: python scripts/eval_demo.py --model {args.out} --threads 1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
