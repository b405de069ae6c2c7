"""``glip vqa`` (answer questions about an image) and ``glip evaluate --task vqa``."""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from glip.tools.common import (
    add_device_arg,
    add_model_args,
    add_output_arg,
    add_quiet_arg,
    add_threshold_arg,
    check_threshold,
    model_arg,
    parse_device,
)

__all__ = ["add_vqa_parser", "evaluate_vqa", "run_evaluate_vqa", "run_vqa", "score_vqa_results"]

EPILOG = """examples:
  glip vqa shapes/images/val_00000.png --question "What color is the circle?" --weights runs/vqa/model
  glip vqa photo.jpg -q "How many cats are there?" -q "Is there a dog?" --weights runs/vqa/model --out answers
  glip evaluate --task vqa --ann shapes/vqa_val.json --images shapes/images --weights runs/vqa/model
  glip evaluate --task vqa --ann v2_val.json --results results.json --vqa-rule evalai   (no model)"""


def _require_model(args: argparse.Namespace) -> str:
    name = model_arg(args)
    if not name or (name == "glip-t" and not getattr(args, "weights", None)):  # `glip evaluate`'s default
        raise ValueError("name a model with a VQA head: --weights FOLDER (e.g. what glip train writes) or --model NAME")
    return name


def _load(args: argparse.Namespace) -> Any:
    from glip.api import resolve_model
    from glip.vqa_api import require_vqa

    model = resolve_model(
        _require_model(args), config=args.config, text_encoder=args.text_encoder, device=parse_device(args.device),
        trust_pickle=args.trust_pickle,
    )  # fmt: skip
    require_vqa(model)
    return model


def run_vqa(args: argparse.Namespace) -> int:
    """Answers ``--question`` (one or more) about IMAGE; prints one line per question and
    writes ``OUT/answers.json`` with ``--out``."""
    from glip.evaluation import write_json
    from glip.utils.image import load_image
    from glip.vqa_api import answer_questions

    questions = [q.strip() for q in args.question or []]
    if not questions or any(not q for q in questions):
        raise ValueError('the question is empty: give --question "..."')
    check_threshold(args.threshold)
    if args.topk < 1:
        raise ValueError(f"--topk must be at least 1, got {args.topk}")
    image = load_image(args.image)  # fail on an unreadable image before loading a model
    model = _load(args)
    answers = answer_questions(model, image, questions, box_threshold=args.threshold, topk=args.topk)
    for a in answers:
        boxes = "; ".join(
            f"[{', '.join(f'{v:.0f}' for v in b)}] {s:.2f}" for b, s in zip(a.boxes.tolist(), a.box_scores.tolist())
        )
        print(f"{a.question} -> {a.answer} ({a.score:.2f})" + (f"  boxes: {boxes}" if boxes else ""))
    if args.out:
        path = write_json(
            Path(args.out) / "answers.json", {"image": str(args.image), "answers": [a.to_dict() for a in answers]}
        )
        print(f"wrote {path}")
    return 0


def add_vqa_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``vqa`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "vqa",
        help="answer questions about an image (models with a VQA head), with the answer's boxes",
        description="Answer questions about an image with GLIPv2's answer head: the best answer of the model's "
        "vocabulary, its score, and the boxes the grounding head scores on the answer slot.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--question", "-q", action="append", help="a question (repeat for several)")
    add_threshold_arg(
        p, default=0.3, help="keep answer boxes scoring above this (default 0.3)", aliases=("--box-threshold",)
    )
    p.add_argument("--topk", type=int, default=5, help="answers listed in answers.json (default 5)")
    add_device_arg(p)
    add_output_arg(p, help="folder for answers.json (default: print only)")
    add_quiet_arg(p)
    add_model_args(p, default_model=None, model_help="a model-zoo name of a model with a VQA head")
    p.set_defaults(func=run_vqa)
    return p


def _answered_records(ann_file: str | Path) -> list[Any]:
    from glip.data.vqa import load_vqa_records

    records = [r for r in load_vqa_records(ann_file, "auto") if r.answers]
    if not records:
        raise ValueError(f"{ann_file} has no answered question to evaluate")
    return records


def evaluate_vqa(
    model: Any,
    ann_file: str | Path,
    image_dir: str | Path,
    out_dir: str | Path | None = None,
    progress: bool = True,
    rule: str | None = None,
) -> dict[str, Any]:
    """Answers every question of ``ann_file`` (VQAv2 / combined json, or GQA) about the
    images in ``image_dir`` and scores them with the official VQA accuracy (``rule``: one
    of :data:`glip.evaluation.vqa.VQA_RULES`, default ``"evalai"``).

    Writes ``OUT/results.json`` (the official results format: ``question_id``, ``answer``)
    and ``OUT/metrics.json`` (``accuracy``, ``per_question_type``, ``per_answer_type``,
    ``rule``...).
    """
    from glip.evaluation import write_json
    from glip.evaluation.vqa import DEFAULT_VQA_RULE, vqa_accuracy
    from glip.vqa_api import answer_questions, require_vqa

    require_vqa(model)
    records = _answered_records(ann_file)
    by_image: dict[Any, list] = defaultdict(list)
    for r in records:
        by_image[r.file_name].append(r)
    items = list(by_image.items())
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc="vqa", unit="image")
    predictions = {}
    for file_name, recs in items:
        answers = answer_questions(model, Path(image_dir) / file_name, [r.question for r in recs], topk=1)
        predictions.update({r.question_id: a.answer for r, a in zip(recs, answers)})
    annotations = [r.to_annotation() for r in records]
    metrics = vqa_accuracy(predictions, annotations, rule or DEFAULT_VQA_RULE).to_dict()
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", [{"question_id": q, "answer": a} for q, a in predictions.items()])
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def score_vqa_results(
    ann_file: str | Path, results_file: str | Path, out_dir: str | Path | None = None, rule: str | None = None
) -> dict[str, Any]:
    """Scores an official-format VQA results file (a list of ``{"question_id", "answer"}``)
    against ``ann_file`` (no model); writes ``OUT/metrics.json``."""
    from glip.evaluation import write_json
    from glip.evaluation.coco import load_json
    from glip.evaluation.vqa import DEFAULT_VQA_RULE, vqa_accuracy

    if not Path(results_file).is_file():
        raise FileNotFoundError(f"no such file: {results_file}")
    results = load_json(results_file)
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and {"question_id", "answer"} <= set(r) for r in results
    ):
        raise ValueError(f"{results_file} is not a VQA results file: a list of {{question_id, answer}} entries")
    predictions = {r["question_id"]: str(r["answer"]) for r in results}
    annotations = [r.to_annotation() for r in _answered_records(ann_file)]
    metrics = vqa_accuracy(predictions, annotations, rule or DEFAULT_VQA_RULE).to_dict()
    if out_dir is not None:
        write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


# Where each rule comes from, printed with the accuracy.
_RULE_SOURCES = {
    "vqa-api": "GT-Vision-Lab/VQA vqaEval.py, master",
    "evalai": "Cloud-CV/VQA-Evaluation vqaEval.py, the EvalAI copy",
}


def run_evaluate_vqa(args: argparse.Namespace) -> int:
    """``glip evaluate --task vqa --ann VQA.json --images DIR`` (or ``--results FILE``)."""
    ann = args.ann or args.data
    if not ann:
        raise ValueError("--task vqa needs --ann VQA.json (VQAv2 annotations, a combined json, or GQA questions)")
    if not Path(ann).is_file():
        raise FileNotFoundError(f"annotation file {ann} does not exist")
    rule = getattr(args, "vqa_rule", None)
    if args.results:
        metrics = score_vqa_results(ann, args.results, args.out, rule)
    else:
        image_dir = Path(args.images) if args.images else Path(ann).parent / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} does not exist (give --images DIR)")
        model = _load(args)
        metrics = evaluate_vqa(model, ann, image_dir, args.out, progress=not args.quiet, rule=rule)
    source = _RULE_SOURCES[metrics["rule"]]
    print(f"VQA accuracy {metrics['accuracy']:.4f} over {metrics['num_questions']} questions "
          f"(rule {metrics['rule']}: {source})")  # fmt: skip
    for qtype, acc in metrics["per_question_type"].items():
        print(f"  {qtype:<24} {acc:.4f}")
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
