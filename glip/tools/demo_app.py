"""The ``glip demo`` web page: a Gradio app with one tab per task the loaded model has.

:func:`build_demo` lays out the tabs of :func:`glip.tools.demo_tasks.available_tasks` (a
tab is absent when its head is); each tab's button calls the matching ``run_*`` function
of :mod:`glip.tools.demo_tasks`. Every tab is also a named Gradio API endpoint
(``/detect``, ``/segment``, ``/vqa``, ``/caption``) that ``gradio_client`` can call: the
outputs are the drawn image, the table (``phrase, score, x1, y1, x2, y2``), the text
(answer or caption; VQA and caption only) and the full-precision JSON result.

A user error (no or unreadable image, empty prompt, out-of-range value) is shown on the
page as a Gradio error message; an unexpected failure too, with its traceback in the
server's log only. Gradio is imported only when the app is built (``pip install
'glip[demo]'``); ``import glip`` never needs it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glip.modeling.glip import GLIP
from glip.tools.demo_tasks import TABLE_HEADERS, TaskResult, available_tasks

__all__ = ["DemoUnavailableError", "build_demo", "check_gradio", "import_gradio", "launch_demo"]

TAB_LABELS = {
    "detect": "Detection",
    "segment": "Segmentation",
    "vqa": "Visual question answering",
    "caption": "Captioning",
}
# Offline page: system fonts instead of the default theme's web fonts (fetched from Google).
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO_FONTS = ["ui-monospace", "monospace"]


class DemoUnavailableError(ValueError):
    """Gradio, which ``glip demo`` needs, is not installed."""


def check_gradio() -> None:
    """:class:`DemoUnavailableError` when Gradio is not installed; cheap (Gradio is looked
    up, not imported), so ``glip demo`` can fail before loading a model."""
    try:
        found = importlib.util.find_spec("gradio") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise DemoUnavailableError("glip demo needs Gradio, which is not installed: pip install 'glip[demo]'")


def import_gradio() -> Any:
    """The ``gradio`` module; :class:`DemoUnavailableError` (one line saying what to
    install) when it is missing. Gradio's usage analytics are switched off (the demo works
    offline) unless ``GRADIO_ANALYTICS_ENABLED`` says otherwise."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as e:
        why = "is not installed" if getattr(e, "name", None) == "gradio" else f"failed to import ({e})"
        raise DemoUnavailableError(f"glip demo needs Gradio, which {why}: pip install 'glip[demo]'") from None
    return gradio


def _upload(payload: Any) -> tuple[str | None, str]:
    """``(local path, the name the user knows)`` of an uploaded image as Gradio passes it
    unprocessed (a ``FileData`` dict, the file already in Gradio's upload cache);
    ``(None, "")`` when nothing was uploaded."""
    if payload is None:
        return None, ""
    if isinstance(payload, dict):
        path = payload.get("path") or None
        return path, payload.get("orig_name") or (Path(path).name if path else "")
    return str(payload), Path(str(payload)).name


def _outputs(result: TaskResult, with_text: bool) -> tuple:
    table = {"headers": TABLE_HEADERS, "data": result.rows}
    if with_text:
        return result.image, result.text, table, result.data
    return result.image, table, result.data


def _endpoint(gr: Any, run: Callable[..., TaskResult], with_text: bool) -> Callable[..., tuple]:
    """``run(image_path, *values, progress=...)`` as a Gradio event function: user errors
    become ``gr.Error`` (a message on the page), an empty result a ``gr.Warning``."""

    def fn(image: Any, *values: Any, progress: Any = gr.Progress()) -> tuple:  # noqa: B008 (Gradio's idiom)
        def report(fraction: float, desc: str) -> None:
            progress(fraction, desc=desc)

        path, name = _upload(image)
        try:
            result = run(path, *values, progress=report)
        except (ValueError, OSError) as e:  # the user's input: one line on the page, naming their file
            message = (str(e).splitlines() or [type(e).__name__])[0]
            raise gr.Error(message.replace(path, name) if path else message, print_exception=False) from None
        except Exception as e:  # a bug: the page says so in one line, the log keeps the traceback
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"the model failed on this input: {type(e).__name__}: {e}", print_exception=False) from None
        if result.note:
            gr.Warning(result.note)
        return _outputs(result, with_text)

    return fn


def _image_input(gr: Any, task: str) -> Any:
    return gr.Image(label="image", type="filepath", sources=["upload", "clipboard"], elem_id=f"{task}-image")


def _result_outputs(gr: Any, task: str, text_label: str | None) -> list[Any]:
    outs = [gr.Image(label="result", type="numpy", format="png", interactive=False, elem_id=f"{task}-result")]
    if text_label:
        outs.append(gr.Textbox(label=text_label, interactive=False, elem_id=f"{task}-text"))
    outs.append(
        gr.Dataframe(
            headers=TABLE_HEADERS,
            label="boxes",
            interactive=False,
            wrap=True,
            elem_id=f"{task}-table",
            column_widths=["36%", "14%", "12.5%", "12.5%", "12.5%", "12.5%"],
        )
    )
    with gr.Accordion("JSON", open=False):
        outs.append(gr.JSON(label="result", elem_id=f"{task}-json"))
    return outs


def _detect_tab(gr: Any, predictor: Any, task: str) -> None:
    from glip.tools.demo_tasks import run_detection

    masks = task == "segment"
    with gr.Row():
        with gr.Column():
            image = _image_input(gr, task)
            prompt = gr.Textbox(
                label="prompt",
                placeholder='phrases separated by "." (e.g. "red circle. blue square."), or a caption',
                elem_id=f"{task}-prompt",
            )
            threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="threshold", elem_id=f"{task}-threshold")
            button = gr.Button("Segment" if masks else "Detect", variant="primary", elem_id=f"{task}-run")
        with gr.Column():
            outputs = _result_outputs(gr, task, None)

    def run(path: str | None, text: str, thr: float, progress: Any) -> TaskResult:
        return run_detection(predictor, path, text, thr, masks=masks, progress=progress)

    gr.on(
        triggers=[button.click, prompt.submit], fn=_endpoint(gr, run, with_text=False),
        inputs=[image, prompt, threshold], outputs=outputs, api_name=task, preprocess=False,
    )  # fmt: skip


def _vqa_tab(gr: Any, model: GLIP) -> None:
    from glip.tools.demo_tasks import run_vqa

    with gr.Row():
        with gr.Column():
            image = _image_input(gr, "vqa")
            question = gr.Textbox(label="question", placeholder="What color is the circle?", elem_id="vqa-question")
            thr = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="box threshold", elem_id="vqa-threshold")
            button = gr.Button("Answer", variant="primary", elem_id="vqa-run")
        with gr.Column():
            outputs = _result_outputs(gr, "vqa", "answer")

    def run(path: str | None, text: str, box_thr: float, progress: Any) -> TaskResult:
        return run_vqa(model, path, text, box_thr, progress=progress)

    gr.on(
        triggers=[button.click, question.submit], fn=_endpoint(gr, run, with_text=True),
        inputs=[image, question, thr], outputs=outputs, api_name="vqa", preprocess=False,
    )  # fmt: skip


def _caption_tab(gr: Any, model: GLIP) -> None:
    from glip.modeling.caption_decoding import require_caption_head
    from glip.tools.demo_tasks import run_caption

    head = require_caption_head(model)
    with gr.Row():
        with gr.Column():
            image = _image_input(gr, "caption")
            beam = gr.Slider(1, 8, value=head.beam_size, step=1, label="beam size (1: greedy)", elem_id="caption-beam")
            length = gr.Slider(1, 64, value=head.max_length, step=1, label="maximum length", elem_id="caption-length")
            thr = gr.Slider(0.0, 1.0, value=head.box_threshold, step=0.01, label="box threshold", elem_id="caption-thr")
            button = gr.Button("Caption", variant="primary", elem_id="caption-run")
        with gr.Column():
            outputs = _result_outputs(gr, "caption", "caption")

    def run(path: str | None, beam_size: int, max_length: int, box_thr: float, progress: Any) -> TaskResult:
        return run_caption(model, path, beam_size, max_length, box_thr, progress=progress)

    button.click(
        _endpoint(gr, run, with_text=True), inputs=[image, beam, length, thr], outputs=outputs, api_name="caption",
        preprocess=False,
    )  # fmt: skip


def build_demo(model: GLIP, model_name: str = "model") -> Any:
    """The ``gr.Blocks`` page for ``model`` (in eval mode, on its device): one tab per
    task of :func:`available_tasks`, each a named API endpoint. Not launched."""
    from glip.api import Predictor

    gr = import_gradio()
    tasks = available_tasks(model)
    predictor = Predictor(model)
    names = ", ".join(TAB_LABELS[t].lower() for t in tasks)
    with gr.Blocks(title=f"glip demo: {model_name}", analytics_enabled=False) as demo:
        gr.Markdown(f"## glip demo\nModel **{model_name}** on `{model.device}`: {names}.", elem_id="demo-header")
        with gr.Tabs():
            for task in tasks:
                with gr.Tab(TAB_LABELS[task], id=task, elem_id=f"tab-{task}"):
                    if task in ("detect", "segment"):
                        _detect_tab(gr, predictor, task)
                    elif task == "vqa":
                        _vqa_tab(gr, model)
                    else:
                        _caption_tab(gr, model)
    return demo


def launch_demo(demo: Any, host: str = "127.0.0.1", port: int = 7860) -> str:
    """Starts serving ``demo`` on ``host:port`` in a background thread and returns its URL
    (``demo.block_thread()`` then waits; ``demo.close()`` stops it). Errors are shown on
    the page (``show_error``); the page needs no network (system fonts). Gradio's own
    banner is silenced: its "set `share=True` in `launch()`" hint means nothing to a
    command-line user, and ``glip demo`` prints the URL itself."""
    gr = import_gradio()
    theme = gr.themes.Default(font=_FONTS, font_mono=_MONO_FONTS)
    demo.queue(default_concurrency_limit=1)  # one model: one request at a time
    try:
        demo.launch(
            server_name=host, server_port=port, share=False, inbrowser=False, show_error=True, quiet=True,
            prevent_thread_lock=True, ssr_mode=False, theme=theme,
        )  # fmt: skip
    except OSError:  # Gradio's message names its own launch() arguments
        raise OSError(
            f"cannot serve on {host}:{port}: the port is in use or the address is not this machine's "
            "(choose another --port or --host)"
        ) from None
    return demo.local_url
