"""Overfit the VQA head on one synthetic image: the right answer to each of its questions.

    python scripts/overfit_vqa.py [--steps 200] [--seed 0]

One image of coloured shapes and its questions (``glip data synthetic``'s
``vqa_train.json``: colour, shape, count, presence, position), loaded through
``VqaDataset``, and a tiny GLIP with the answer head (configs/vqa/synthetic.yaml's
architecture, random weights, the pretrained frozen MiniLM text encoder with its dropout
off, so that training and inference see the same features). The vocabulary is every
answer the synthetic questions can have (colours, shapes, 0-5, yes/no, left/right), so
each question is a 20-way choice.

By default the answer head trains alone (``loss_vqa``) on the fused text of the random
trunk, computed once (seconds); ``--full`` trains the whole model with the full criterion
(grounding on the diverted answer boxes + ``loss_vqa``), all questions in one batch (about
a second per step on a CPU). Every ``--eval-every`` steps the questions are asked through
:func:`glip.vqa_api.answer_questions` (the inference path: image file, prompt, backbone,
trunk, heads); the run stops when all are right. Exit status 0 when they are.
``tests/modeling/test_vqa_overfit.py`` runs :func:`run` (the ``--full`` run is a slow test).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

IMAGE_SIZE = 96
CONFIG = REPO / "configs" / "vqa" / "synthetic.yaml"


def vocabulary() -> list[str]:
    """Every answer a synthetic question can have."""
    from glip.data.synthetic import DEFAULT_COLORS, DEFAULT_SHAPES

    return [*DEFAULT_COLORS, *DEFAULT_SHAPES, *(str(n) for n in range(6)), "yes", "no", "left", "right"]


def build(seed: int):
    """The tiny VQA model, its criterion, the image's path and its question records/batch."""
    from glip.config import load_config
    from glip.data import collate_grounding, generate_synthetic
    from glip.engine.run import build_training_model, prepare_for_training
    from glip.engine.vqa import build_vqa_dataset
    from glip.modeling.build import build_loss
    from glip.text import text_encoder_without_dropout

    work = Path(tempfile.mkdtemp(prefix="overfit_vqa_"))
    text_dir = text_encoder_without_dropout("all-MiniLM-L6-v2", work / "minilm_nodrop")
    data = generate_synthetic(work, num_train=1, num_val=0, image_size=IMAGE_SIZE, seed=seed, max_objects=4)
    cfg = load_config(
        CONFIG,
        [
            f"model.text.encoder={text_dir}",
            "model.backbone.swin.drop_path_rate=0.0",
            "model.trunk.fusion_dropout=0.0",
            f"input.min_size_train=[{IMAGE_SIZE}]",
            f"input.max_size_train={IMAGE_SIZE}",
            f"input.min_size_test={IMAGE_SIZE}",
            f"input.max_size_test={IMAGE_SIZE}",
            f"data.train_json={data.root / 'vqa_train.json'}",
            f"data.train_images={data.image_dir}",
        ],
    )
    cfg.model.heads.vqa.answers = vocabulary()  # set here: an override would read yes/no as YAML booleans
    torch.manual_seed(seed)
    model = prepare_for_training(build_training_model(cfg), cfg)
    dataset = build_vqa_dataset(cfg, model.tokenizer)
    batch = collate_grounding(
        [dataset[i] for i in range(len(dataset))], cfg.input.size_divisibility, cfg.model.text.max_query_len
    )
    return cfg, model, build_loss(cfg), data.image_dir / dataset.records[0].file_name, dataset.records, batch


def run(
    steps: int = 200,
    seed: int = 0,
    eval_every: int = 10,
    lr: float = 1e-3,
    full: bool = False,
    verbose: bool = True,
) -> list[bool]:
    """Trains until every question is answered right (or ``steps``); returns, per
    question, whether the final answer is right."""
    from glip.modeling.heads.vqa import vqa_loss
    from glip.vqa_api import answer_questions

    cfg, model, criterion, image, records, batch = build(seed)
    head = model.heads["vqa"]
    trunk = None
    if not full:  # the trunk's output, once; only the answer head trains
        model.eval()
        with torch.no_grad():
            trunk = model(batch.images, batch.input_ids, batch.attention_mask).trunk
        model.requires_grad_(False)
        head.requires_grad_(True)
        scores = torch.stack([t.answer_scores for t in batch.targets])  # [Q, A]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    questions = [r.question for r in records]
    truth = [r.multiple_choice_answer for r in records]
    right = [False] * len(records)
    start = time.time()
    for step in range(1, steps + 1):
        model.train()
        model.text_encoder.eval()  # frozen, as prepare_for_training keeps it
        if trunk is None:
            out = model(batch.images, batch.input_ids, batch.attention_mask)
            losses = criterion(model.heads, out, batch.attention_mask, batch.targets)
        else:
            losses = {"loss_vqa": vqa_loss(head(trunk, {}).logits, scores)}
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            model.eval()
            answers = answer_questions(model, image, questions)
            right = [a.answer == t for a, t in zip(answers, truth)]
            if verbose:
                shown = "; ".join(f"{q} {a.answer} ({t})" for q, a, t in zip(questions, answers, truth))
                loss = float(losses["loss_vqa"].detach())
                print(f"step {step} loss_vqa {loss:.4f} {time.time() - start:.1f}s: {shown}")
            if all(right):
                break
    return right


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--full", action="store_true", help="train the whole model (slow), not the head alone")
    args = parser.parse_args()
    right = run(args.steps, args.seed, args.eval_every, full=args.full)
    print(f"{sum(right)} of {len(right)} questions answered right")
    return 0 if all(right) else 1


if __name__ == "__main__":
    sys.exit(main())
