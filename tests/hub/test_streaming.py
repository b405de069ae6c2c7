"""Loading a safetensors folder streams it into the built model (the weights are never held
twice) and gives exactly what reading the whole file and ``load_state_dict`` gave."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from glip.hub.checkpoint import CheckpointError, _to_our_keys, read_checkpoint, save_model
from glip.hub.legacy_keys import remap_legacy_state_dict
from glip.hub.loading import load_model

DEMO = Path(__file__).resolve().parents[2] / "glip" / "assets" / "demo-shapes"


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO)


def _reference(base, folder: Path) -> dict[str, torch.Tensor]:
    """The model as the old path loaded it: read the whole file, load_state_dict."""
    model = copy.deepcopy(base)
    with torch.no_grad():
        for p in model.parameters():  # nothing left over from ``base``
            p.zero_()
    state = _to_our_keys(read_checkpoint(folder / "model.safetensors"), str(folder))
    if not any(k.startswith("text_encoder.") for k in state):
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("text_encoder.")})
    model.load_state_dict(state, strict=True)
    return model.state_dict()


@pytest.mark.parametrize("dtype", [None, torch.float16, torch.bfloat16])
def test_streamed_load_is_bit_identical(demo, tmp_path, dtype) -> None:
    folder = save_model(demo, tmp_path / "m", dtype=dtype)
    loaded = load_model(folder).state_dict()
    reference = _reference(demo, folder)
    assert list(loaded) == list(reference)
    for key, value in reference.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


def test_loading_does_not_read_the_whole_file(tmp_path, monkeypatch) -> None:
    """The folder is not read into a second state dict (safetensors' load_file / torch.load)."""
    import safetensors.torch

    model = load_model(DEMO)
    with torch.no_grad():
        for p in model.parameters():  # a distinct model: random values everywhere
            p.copy_(torch.randn_like(p))
    folder = save_model(model, tmp_path / "random")

    def refuse(*args, **kwargs):
        raise AssertionError("the whole checkpoint was read into memory")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_model(folder).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_legacy_names_and_errors_still_apply(demo, tmp_path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in demo.state_dict().items() if not k.startswith("text_encoder.")}
    legacy = {k.replace("heads.grounding.", "head.", 1): v for k, v in state.items()}
    assert remap_legacy_state_dict(legacy).keys() == state.keys()
    folder = save_model(demo, tmp_path / "legacy", include_text_encoder=False)
    save_file(legacy, str(folder / "model.safetensors"))
    loaded = load_model(folder).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())

    # Strict checks keep naming the keys, from the header alone.
    bad = dict(state)
    bad.pop("heads.grounding.bias0")
    bad["heads.grounding.cls_logits.weight"] = torch.zeros(3, 3)
    save_file(bad, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong shape: heads\.grounding\.cls_logits\.weight \(3, 3\) vs model"):
        load_model(folder)
    with pytest.raises(CheckpointError, match=r"1 missing keys: heads\.grounding\.bias0"):
        load_model(folder)

    # A truncated file is one clear error, not a traceback from deep inside.
    save_file(state, str(folder / "model.safetensors"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_model(folder)
    (folder / "model.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_model(folder)
