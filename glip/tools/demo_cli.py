"""``glip demo``: serve a local web page to try a model on one's own images.

The page (:mod:`glip.tools.demo_app`) has one tab per task the model has: detection, and
segmentation, visual question answering and captioning when the model has those heads.
It binds to 127.0.0.1 (this machine only) unless ``--host`` says otherwise, needs no
network, and needs Gradio (``pip install 'glip[demo]'``).
"""

from __future__ import annotations

import argparse
import ipaddress

from glip.tools.common import add_device_arg, add_model_args, add_quiet_arg, model_arg, parse_device

__all__ = ["add_demo_parser", "default_demo_model", "run_demo"]

EPILOG = """examples:
  glip demo                                   # glip-t when cached, else the bundled demo-shapes
  glip demo --model glip-t --device cuda --port 8080
  glip demo --weights runs/vqa/model          # a trained folder: its VQA / caption / mask tabs too
  glip demo --host 0.0.0.0                    # reachable from other machines (no authentication)"""


def default_demo_model() -> str:
    """``glip-t`` when its converted weights are cached (no download), else the bundled
    ``demo-shapes`` model, so that ``glip demo`` works offline."""
    from glip.hub.zoo import is_cached

    return "glip-t" if is_cached("glip-t") else "demo-shapes"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_demo(args: argparse.Namespace) -> int:
    """Loads the model, builds the page and serves it until interrupted."""
    from glip.api import resolve_model
    from glip.tools.demo_app import TAB_LABELS, build_demo, check_gradio, launch_demo
    from glip.tools.demo_tasks import available_tasks

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    check_gradio()  # a missing Gradio fails before the model is loaded
    name = model_arg(args) or default_demo_model()
    model = resolve_model(
        name, config=args.config, text_encoder=args.text_encoder, device=parse_device(args.device),
        trust_pickle=args.trust_pickle,
    )  # fmt: skip
    demo = build_demo(model, str(name))
    url = launch_demo(demo, args.host, args.port)
    tabs = ", ".join(TAB_LABELS[t].lower() for t in available_tasks(model))
    where = "this machine only" if _is_loopback(args.host) else "reachable from other machines, without authentication"
    print(f"glip demo: serving {name} ({tabs}) at {url} ({where}); Ctrl+C stops it", flush=True)
    try:
        demo.block_thread()
    finally:
        demo.close()
    return 0


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``demo`` on the ``glip`` command's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="a local web page to try a model on your images (needs glip[demo])",
        description="Serve a web page (Gradio) with one tab per task the model has: detection (image, prompt, "
        "threshold -> the drawn image and a table of phrase, score, box), and segmentation, visual question "
        "answering and captioning when the model has a mask, VQA or caption head. Each tab is also a Gradio API "
        "endpoint (/detect, /segment, /vqa, /caption) for gradio_client. Works offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 serves the network)",
    )
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    add_device_arg(p)
    add_quiet_arg(p)
    add_model_args(p, default_model=None, model_help="a model-zoo name (default: glip-t when cached, else demo-shapes)")
    p.set_defaults(func=run_demo)
    return p
