"""``glip demo`` end to end: the command serves the page on a loopback port; a real
Gradio client gets the same detections as ``glip.predict``; headless Chromium uploads an
image, types a prompt, submits and sees the drawn result and its table (a screenshot is
saved); a model gets one tab per head it has: the demo model (boxes, masks, answers and
captions) all four, a detector only the detection tab.

Needs the dev extras (gradio, gradio_client, playwright) and Debian's ``chromium``
(``scripts/install_chromium.sh``); without them each test is skipped with a one-line
reason, except under ``CI=true``, where a missing piece is a failure.
Set ``GLIP_DEMO_SCREENSHOT=PATH`` to keep the screenshot (the README's is made so).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip.cli import main
from tests.conftest import IN_CI

REPO = Path(__file__).resolve().parents[2]
PROMPT = "blue triangle. blue diamond. red circle."
THRESHOLD = 0.45
CHROMIUM = os.environ.get("GLIP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _require(ok: bool, reason: str) -> None:
    """Skip (a fresh clone without the dev extras), or fail under CI=true, when not ``ok``."""
    if not ok:
        (pytest.fail if IN_CI else pytest.skip)(reason)


def _require_gradio() -> None:
    missing = [m for m in ("gradio", "gradio_client") if importlib.util.find_spec(m) is None]
    _require(not missing, f"{' and '.join(missing)} not installed (pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from glip.data import generate_synthetic

    data = generate_synthetic(tmp_path_factory.mktemp("demo"), num_train=0, num_val=2, image_size=(256, 320), seed=7)
    return data.image_dir / "val_00001.png"  # a blue triangle, a blue diamond and a red circle


class DemoServer:
    """``python -m glip.cli demo`` with the bundled model on a free loopback port, started
    at once; :meth:`ready` waits for the line it prints once it serves."""

    def __init__(self, gradio_tmp: Path, model_args: tuple[str, ...] = ("--model", "demo-shapes")) -> None:
        self.port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
        env["GRADIO_TEMP_DIR"] = str(gradio_tmp)
        cmd = [sys.executable, "-m", "glip.cli", "demo", *model_args, "--device", "cpu", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()  # drains the pipe

    def ready(self, timeout: float = 120) -> tuple[str, str]:
        """``(URL, the "glip demo: serving ..." line)``; fails with the output if it exits."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith("glip demo: serving") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"glip demo did not start (exit {self.proc.poll()}):\n{''.join(self.lines)}")
            time.sleep(0.1)
        return f"http://127.0.0.1:{self.port}/", next(x for x in self.lines if x.startswith("glip demo: serving"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo server, started when a test first asks for it (without waiting: the
    reference detections are computed meanwhile); always stopped at the end."""
    _require_gradio()
    demo = DemoServer(tmp_path_factory.mktemp("gradio_server"))
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def reference(shapes):
    """``glip.predict`` on the test image: what the page and the API must give."""
    import glip

    det = glip.predict(str(shapes), PROMPT, model="demo-shapes", device="cpu", threshold=THRESHOLD)
    assert len(det) >= 2, "the demo model should find shapes on this image"
    return det


# --------------------------------------------------------------------------------------------
# A model with every head: every tab, each endpoint equal to the library call


@pytest.fixture(scope="module")
def all_heads_model():
    from glip.config import load_config
    from glip.modeling.build import build_model
    from glip.modeling.language.text_encoder import load_bert_config
    from glip.text import load_tokenizer, resolve_text_encoder

    overrides = [
        "input.min_size_test=64", "input.max_size_test=64", "inference.pre_nms_thresh=0.0",
        "model.heads.mask.enabled=true", "model.heads.caption.enabled=true", "model.heads.caption.max_length=4",
    ]  # fmt: skip
    cfg = load_config(REPO / "configs" / "vqa" / "synthetic.yaml", overrides)
    cfg.model.heads.vqa.answers = ["red", "blue", "circle", "square", "yes", "no"]
    text = resolve_text_encoder(cfg.model.text.encoder)
    torch.manual_seed(0)
    return build_model(cfg, load_bert_config(text), load_tokenizer(text), pretrained_text=text).eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: the tiny model's many small ops (caption decoding step by step)
    run ~40x slower with two threads spin-waiting on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_head_gets_its_task(all_heads_model, shapes, one_thread):
    """The tabs are the model's heads; each tab computes what the library call does."""
    from glip.api import Predictor
    from glip.captioning import caption_image
    from glip.tools.demo_tasks import available_tasks, run_caption, run_detection, run_vqa
    from glip.vqa_api import answer_questions

    model, image = all_heads_model, str(shapes)
    assert available_tasks(model) == ["detect", "segment", "vqa", "caption"]
    seg = run_detection(Predictor(model), image, "red circle. blue square.", 0.0, masks=True)
    ref = Predictor(model).predict(image, "red circle. blue square.", threshold=0.0, masks=True)
    assert seg.data["detections"] == ref.to_list() and len(ref) > 0 and "mask" in seg.data["detections"][0]
    assert seg.image.shape == (*ref.image_size, 3) and len(seg.rows) == len(ref)
    vqa = run_vqa(model, image, "What color is the circle?", 0.3)
    (answer,) = answer_questions(model, image, ["What color is the circle?"], box_threshold=0.3)
    assert vqa.data == answer.to_dict() and vqa.text.startswith(answer.answer)
    cap = run_caption(model, image, 1, 4)
    assert cap.text == cap.data["caption"] == caption_image(model, image, beam_size=1, max_length=4).text
    with pytest.raises(ValueError, match="the question is empty"):
        run_vqa(model, image, " ")
    with pytest.raises(ValueError, match="no image"):
        run_caption(model, None)


@pytest.mark.slow
def test_every_head_gets_its_tab_and_endpoint(all_heads_model, shapes, tmp_path, one_thread):
    """Through Gradio: one named endpoint per head, each equal to the library call."""
    _require_gradio()
    from gradio_client import Client, handle_file

    from glip.api import Predictor
    from glip.captioning import caption_image
    from glip.tools.demo_app import build_demo, launch_demo
    from glip.vqa_api import answer_questions

    model = all_heads_model
    demo = build_demo(model, "all-heads")
    try:
        port = _free_port()
        url = launch_demo(demo, "127.0.0.1", port)
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}: the port is in use"):
            launch_demo(build_demo(model, "again"), "127.0.0.1", port)  # one line for the CLI
        client = Client(url, verbose=False, download_files=str(tmp_path))
        endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
        assert endpoints == {"/detect", "/segment", "/vqa", "/caption"}
        image = handle_file(str(shapes))
        _, _, seg = client.predict(image, "red circle. blue square.", 0.0, api_name="/segment")
        ref = Predictor(model).predict(str(shapes), "red circle. blue square.", threshold=0.0, masks=True)
        assert len(seg["detections"]) == len(ref) > 0
        assert [d["mask"] for d in seg["detections"]] == [d["mask"] for d in ref.to_list()]
        _, answer, _, data = client.predict(image, "What color is the circle?", 0.3, api_name="/vqa")
        (ref_answer,) = answer_questions(model, str(shapes), ["What color is the circle?"], box_threshold=0.3)
        assert data["answer"] == ref_answer.answer and answer.startswith(ref_answer.answer)
        _, text, _, data = client.predict(image, 1, 4, 0.5, api_name="/caption")
        assert text == data["caption"] == caption_image(model, str(shapes), beam_size=1, max_length=4).text
    finally:
        demo.close()


# --------------------------------------------------------------------------------------------
# The command's user errors: one line, no traceback; Gradio stays optional


def _error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in err[0] and err[0].startswith("glip demo: error:"), err
    return err[0]


def test_user_errors_are_one_line(capsys, monkeypatch):
    assert main(["demo", "--model", "demo-shapes", "--port", "0"]) == 1
    assert "--port" in _error_line(capsys)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert main(["demo", "--model", "demo-shapes", "--port", str(_free_port())]) == 1
    assert "pip install 'glip[demo]'" in _error_line(capsys)
    monkeypatch.delitem(sys.modules, "gradio")
    _require_gradio()
    assert main(["demo", "--model", "no-such-model", "--port", str(_free_port())]) == 1
    assert "no-such-model" in _error_line(capsys)


def test_launch_prints_no_gradio_share_hint(capfd):
    _require_gradio()
    import gradio as gr

    from glip.tools.demo_app import launch_demo

    with gr.Blocks() as demo:
        gr.Markdown("x")
    try:
        url = launch_demo(demo, "127.0.0.1", _free_port())
    finally:
        demo.close()
    assert url.startswith("http://127.0.0.1:")
    printed = capfd.readouterr()
    assert "share=True" not in printed.out + printed.err


def test_gradio_is_imported_lazily():
    """No module of the package imports Gradio at import time (``import glip`` and the
    ``glip`` parser must work without it); only functions do, through ``import_gradio``."""
    import ast

    offenders = []
    for path in sorted((REPO / "glip").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in ("gradio", "gradio_client") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


# --------------------------------------------------------------------------------------------
# The command with the demo model, through a real client and a real browser


def test_gradio_client_gets_the_results_of_glip_predict(server, shapes, reference, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from glip.structures import Detections
    from glip.utils.image import load_image

    url, _ = server.ready()
    client = Client(url, verbose=False, download_files=str(tmp_path))
    # One endpoint per head: the demo model has all four.
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert endpoints == {"/detect", "/segment", "/vqa", "/caption"}
    image, table, data = client.predict(handle_file(str(shapes)), PROMPT, THRESHOLD, api_name="/detect")
    dets = data["detections"]
    assert [d["phrase"] for d in dets] == reference.phrases
    torch.testing.assert_close(torch.tensor([d["score"] for d in dets]), reference.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor([d["box"] for d in dets]), reference.boxes, atol=1e-2, rtol=0)
    assert [d["label"] for d in dets] == reference.labels.tolist()
    width, height = Image.open(shapes).size
    assert (data["width"], data["height"]) == (width, height)
    assert [row[0] for row in table["data"]] == reference.phrases
    assert table["headers"] == ["phrase", "score", "x1", "y1", "x2", "y2"]
    # The drawn image is glip detect's drawing of these detections, pixel for pixel.
    served = Detections(
        torch.tensor([d["box"] for d in dets]), torch.tensor([d["score"] for d in dets]),
        torch.tensor([d["label"] for d in dets]), [d["phrase"] for d in dets], (height, width),
    )  # fmt: skip
    drawn = np.asarray(Image.open(image).convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(served.plot(load_image(shapes))))
    # User errors come back as one-line messages, not tracebacks.
    with pytest.raises(AppError, match="the prompt is empty"):
        client.predict(handle_file(str(shapes)), "  ", THRESHOLD, api_name="/detect")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("this is text")
    with pytest.raises(AppError, match=r"cannot read not_an_image\.png as an image") as err:
        client.predict(handle_file(str(bad)), PROMPT, THRESHOLD, api_name="/detect")
    assert "Traceback" not in str(err.value)
    # The answer and the caption are the library's.
    import glip

    _, answer, _, data = client.predict(handle_file(str(shapes)), "How many circles are there?", 0.3, api_name="/vqa")
    ref_answer = glip.answer(str(shapes), "How many circles are there?", model="demo-shapes", device="cpu")
    assert data["answer"] == ref_answer.answer and answer.startswith(ref_answer.answer)
    _, text, _, data = client.predict(handle_file(str(shapes)), 1, 20, 0.3, api_name="/caption")
    reference_caption = glip.caption(str(shapes), model="demo-shapes", device="cpu", beam_size=1)  # as asked
    assert text == data["caption"] == reference_caption.text


@pytest.mark.slow  # a second server process: ~6 s (pytest -m slow)
def test_an_official_checkpoint_is_served(fixtures_dir, tmp_path_factory, shapes, tmp_path):
    """An official ``.pth`` (the fixture's tiny GLIP-T, written by the official code) with its
    config: the page serves it and ``/detect`` equals ``glip.predict`` on the same files."""
    _require_gradio()
    from gradio_client import Client, handle_file

    import glip
    from tests.conftest import tiny_text_encoder_dir

    folder = fixtures_dir / "official" / "tiny_glip_t"
    text = tiny_text_encoder_dir("tiny_glip_t", tmp_path_factory.mktemp("official_text"))
    files = ("--weights", str(folder / "model_official.pth"), "--config", str(folder / "config.yaml"))
    demo = DemoServer(tmp_path_factory.mktemp("official_gradio"), (*files, "--text-encoder", str(text)))
    try:
        url, line = demo.ready()
        assert "(detection)" in line, line  # a detector: one tab
        client = Client(url, verbose=False, download_files=str(tmp_path))
        _, _, data = client.predict(handle_file(str(shapes)), PROMPT, 0.0, api_name="/detect")
    finally:
        demo.stop()
    model = glip.load_model(folder / "model_official.pth", folder / "config.yaml", text_encoder=text, device="cpu")
    ref = glip.predict(str(shapes), PROMPT, model=model, threshold=0.0)
    assert [d["phrase"] for d in data["detections"]] == ref.phrases and len(ref) > 0
    torch.testing.assert_close(torch.tensor([d["score"] for d in data["detections"]]), ref.scores, atol=1e-4, rtol=0)


def test_server_binds_localhost_and_says_so(server):
    url, line = server.ready()
    assert url in line and "127.0.0.1" in line and "this machine only" in line, line
    assert "share=True" not in "".join(server.lines)  # Gradio's hint, useless to a CLI user
    assert "(detection, segmentation, visual question answering, captioning)" in line, line  # all four heads


def test_browser_uploads_prompts_and_sees_the_result(server, shapes, reference, tmp_path):
    _require(importlib.util.find_spec("playwright") is not None, "playwright not installed (pip install -e '.[dev]')")
    _require(CHROMIUM is not None, "no chromium on PATH (scripts/install_chromium.sh installs Debian's)")
    from playwright.sync_api import expect, sync_playwright

    url, _ = server.ready()
    shot = Path(os.environ.get("GLIP_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url, wait_until="domcontentloaded")
            expect(page.locator("#tab-detect")).to_be_attached(timeout=20_000)
            assert page.get_by_role("tab", name="Segmentation").count() == 1  # the mask head's tab
            assert page.get_by_role("tab", name="Visual question answering").count() == 1  # the answer head's tab
            # Upload, prompt, threshold, submit: the drawn image and the table of phrases.
            page.locator("#detect-image input[type=file]").set_input_files(str(shapes))
            page.locator("#detect-prompt textarea").fill(PROMPT)
            page.locator("#detect-threshold input[type=number]").fill(str(THRESHOLD))
            page.locator("#detect-threshold input[type=number]").press("Enter")
            page.locator("#detect-run").click()
            result = page.locator("#detect-result img")
            expect(result).to_be_visible(timeout=30_000)
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=result.element_handle())
            assert result.evaluate("img => img.naturalWidth") == Image.open(shapes).size[0]
            table = page.locator("#detect-table")
            for phrase in set(reference.phrases):
                expect(table).to_contain_text(phrase, timeout=15_000)
            expect(table).to_contain_text(f"{reference.scores[-1].item():.3f}".rstrip("0"))  # the threshold applied
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            # An empty prompt: a message on the page, no traceback.
            page.locator("#detect-prompt textarea").fill("")
            page.locator("#detect-run").click()
            expect(page.get_by_text("the prompt is empty").first).to_be_visible(timeout=15_000)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    # Small enough for the README (a palette PNG: the page is flat colours).
    Image.open(shot).convert("RGB").quantize(colors=128).save(shot, optimize=True)
    assert Image.open(shot).size[0] >= 1000
