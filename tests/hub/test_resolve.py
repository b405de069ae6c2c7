"""One model resolver: zoo names, folders, files and tuned deltas everywhere; zoo config
names for --config; a refused pickle says why and names the opt-in. Uses only the
bundled demo-shapes model (no fixtures needed)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import glip
from glip.cli import main
from glip.hub import fetch, sources
from glip.hub.checkpoint import CheckpointError
from glip.hub.loading import load_model
from glip.hub.sources import resolve_config, resolve_model_source

DEMO = fetch.resolve_weights("demo-shapes")


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO)


def test_zoo_name_works_in_every_python_entry_point(demo):
    assert isinstance(glip.load_model("demo-shapes"), glip.GLIP)
    source = resolve_model_source("demo-shapes")
    assert source.weights == DEMO and source.config == DEMO / "config.yaml" and source.zoo_name == "demo-shapes"
    image = torch.randint(0, 255, (96, 128, 3), dtype=torch.uint8).numpy()
    ref = demo.predict(image, "red circle. blue square.", threshold=0.0)
    for got in (
        glip.Predictor("demo-shapes", device="cpu").predict(image, "red circle. blue square.", threshold=0.0),
        glip.predict(image, "red circle. blue square.", model="demo-shapes", device="cpu", threshold=0.0),
    ):
        assert torch.equal(got.boxes, ref.boxes) and got.phrases == ref.phrases


def test_files_folders_and_config_names_resolve(demo, tmp_path):
    # A bare .pth (our keys) carries no config: refused with the fix named, then loaded with one.
    torch.save(demo.state_dict(), tmp_path / "demo.pth")
    with pytest.raises(CheckpointError, match="zoo config name"):
        load_model(tmp_path / "demo.pth")
    with pytest.raises(FileNotFoundError, match="--config"):
        resolve_model_source(tmp_path / "demo.pth").require_config()
    model = load_model(tmp_path / "demo.pth", DEMO / "config.yaml")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), demo.state_dict().values()))
    # A .safetensors file finds the config beside it.
    assert resolve_model_source(DEMO / "model.safetensors").config == DEMO / "config.yaml"
    # Zoo config names are configs/<name>.yaml; unknown names list the known ones.
    assert resolve_config("glip-t").name == "glip-t.yaml" and resolve_config("glip-t").is_file()
    with pytest.raises(FileNotFoundError, match="glip-t"):
        resolve_config("glip-x")
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a model-zoo name"):
        load_model("no-such-model")


def test_tuned_delta_resolves_to_its_base_config(tmp_path, demo):
    from glip.hub.tuned import save_tuned

    demo.enable_prompt_offset(8)
    try:
        save_tuned(demo, tmp_path / "tuned", base="demo-shapes", mode="prompt")
    finally:
        demo.prompt_offset = None
    assert resolve_model_source(tmp_path / "tuned").config == DEMO / "config.yaml"
    assert isinstance(load_model(tmp_path / "tuned"), glip.GLIP)


def test_config_zoo_name_on_the_command_line(demo, tmp_path, monkeypatch, capsys):
    """`--weights FILE --config NAME` (the README's offline advice) with a zoo config name."""
    torch.save(demo.state_dict(), tmp_path / "demo.pth")
    monkeypatch.setattr(sources, "config_names", lambda: ["demo-cfg", "glip-t"])
    monkeypatch.setattr(sources, "zoo_config", lambda name: DEMO / "config.yaml")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    rc = main(["detect", str(image), "--weights", str(tmp_path / "demo.pth"), "--config", "demo-cfg",
               "--prompt", "red circle.", "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert "detections" in json.loads((tmp_path / "out" / "detections.json").read_text())[0]


class _Payload:
    """Unpickling this runs os.mkdir(path): code execution."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_code_executing_pickle_names_trust_pickle(tmp_path, capsys, protocol):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": _Payload(str(marker))}, protocol=protocol))
    with pytest.raises(CheckpointError) as e:
        load_model(evil, DEMO / "config.yaml")
    message = str(e.value)
    assert "trust_pickle=True" in message and "--trust-pickle" in message and "arbitrary code" in message
    assert "mkdir" in message and "corrupt" not in message
    assert not marker.exists()
    rc = main(["convert", str(evil), str(tmp_path / "out"), "--config", str(DEMO / "config.yaml")])
    err = capsys.readouterr().err
    assert rc == 1 and "--trust-pickle" in err and "Traceback" not in err
    # Damaged files are still reported as such.
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 100)
    (tmp_path / "cut.pth").write_bytes(evil.read_bytes()[:-5])
    for name in ("junk.pth", "cut.pth"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_model(tmp_path / name, DEMO / "config.yaml")
