"""Where one prompt chunk's time goes: the trunk and grounding head of GLIP-T on one chunk.

Builds GLIP-T at random init in the official layout (as ``scripts/bench_predict.py``),
encodes the 1203-name class list of ``scripts/bench_classes.py`` once, runs the backbone once
on the chelsea image (shorter side ``--min-size``), then times ``--rows`` chunks stacked as
one pass (``glip.modeling.prompt_batch``, as ``Predictor(prompts_per_pass=...)`` does) through
the trunk and head: the wall time per module (forward hooks, repeated modules summed), the
minor page faults and system time of the pass, and ``torch.profiler``'s ops by self CPU time,
grouped by input shape. One thread by default; only the shares are meaningful on a busy machine.

    python scripts/profile_chunk.py --min-size 400 [--rows 4] [--threads 1] [--top 25]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-size", type=int, default=400, help="shorter image side (default 400)")
    parser.add_argument("--rows", type=int, default=1, help="chunks stacked in the pass (default 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=25, help="rows of the op table")
    args = parser.parse_args()

    import bench_classes
    import bench_predict
    import torch
    from torch.profiler import ProfilerActivity, profile

    from glip.api import Predictor
    from glip.modeling.glip import GROUNDING
    from glip.modeling.prompt_batch import repeat_features, stack_text

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = bench_predict._build_glip()
    predictor = Predictor(model, device="cpu", batch_size=1)  # also its allocator setting
    model.preprocessing = replace(
        model.preprocessing, min_size=args.min_size, max_size=round(1333 * args.min_size / 800)
    )
    encoded = predictor.encode_prompt(bench_classes.class_names(1203))
    image = predictor.processor.batch([predictor.processor(bench_predict._image()[0])[0]])
    with torch.no_grad():
        t0 = time.perf_counter()
        features = model.backbone(image.tensor)  # L x [1, C, H_l, W_l]
        backbone_s = time.perf_counter() - t0
        text = stack_text(encoded.text[: args.rows], 1)  # [K, T, D]
        features = repeat_features(features, args.rows)  # L x [K, C, H_l, W_l]

        def run() -> None:
            model.forward_text_features(features, text, heads=(GROUNDING,))

        run()  # warm-up
        spent: dict[str, float] = defaultdict(float)
        started: dict[str, float] = {}
        hooks = []
        for name, module in [("grounding", model.grounding), *model.trunk.named_modules()]:
            if not name or name.count(".") > 3:
                continue
            key = "trunk." + ".".join(p for p in name.split(".") if not p.isdigit()) if name != "grounding" else name
            hooks.append(
                module.register_forward_pre_hook(lambda m, i, k=key: started.__setitem__(k, time.perf_counter()))
            )
            hooks.append(
                module.register_forward_hook(
                    lambda m, i, o, k=key: spent.__setitem__(k, spent[k] + time.perf_counter() - started[k])
                )
            )
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        run()
        total = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        for hook in hooks:
            hook.remove()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            run()

    print(
        f"image {tuple(image.tensor.shape)}, {args.rows} chunk(s) of {text.mask.shape[1]} tokens, {args.threads} thread(s)"
    )
    print(
        f"backbone {backbone_s:.3f} s; trunk + head {total:.3f} s ({total / args.rows:.3f} s per chunk, "
        f"{total / args.rows / backbone_s:.1f}x the backbone); minor faults {after.ru_minflt - before.ru_minflt}, "
        f"system time {after.ru_stime - before.ru_stime:.2f} s"
    )
    for key, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.005 * total:
            print(f"  {key:<42} {seconds:8.3f} s {100 * seconds / total:5.1f} %")
    table = prof.key_averages(group_by_input_shape=True)
    print(
        table.table(
            sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=28, max_shapes_column_width=70
        )
    )


if __name__ == "__main__":
    main()
