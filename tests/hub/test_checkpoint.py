"""Loading official checkpoints: key coverage of the full-size models, errors, conversion."""

from __future__ import annotations

import json

import pytest
import torch

from glip.config import load_config
from glip.hub.checkpoint import CheckpointError, read_checkpoint
from glip.hub.loading import load_model
from glip.hub.official_keys import remap_official_state_dict
from glip.modeling.build import build_model
from glip.modeling.language.text_encoder import load_bert_config
from glip.text import BUNDLED_TEXT_ENCODERS
from tests.conftest import OFFICIAL, official_state_dict, tiny_text_encoder_dir

pytestmark = pytest.mark.needs_fixtures  # every test here reads the official checkpoints

ZOO = {"t": "glip-t", "l": "glip-l", "a": "glip-t-a"}


@pytest.mark.parametrize("short", sorted(ZOO))
def test_full_size_official_keys_map_one_to_one(short):
    """Every key of the full-size official checkpoint maps to a tensor of ours with the
    same shape, and none of ours is left without a checkpoint key."""
    listing = json.loads((OFFICIAL / f"keys_glip_{short}.json").read_text())
    official = {k["key"]: torch.empty(k["shape"], device="meta") for k in listing["keys"]}
    remapped = remap_official_state_dict(official)
    cfg = load_config(__file__.rsplit("/tests/", 1)[0] + f"/configs/{ZOO[short]}.yaml")
    bert = load_bert_config(BUNDLED_TEXT_ENCODERS["bert-base-uncased"])
    with torch.device("meta"):
        model = build_model(cfg, bert)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(listing["keys"]) == listing["num_keys"]
    assert sorted(set(remapped) - set(ours)) == []
    assert sorted(set(ours) - set(remapped)) == []
    wrong = {k: (tuple(v.shape), ours[k]) for k, v in remapped.items() if tuple(v.shape) != ours[k]}
    assert wrong == {}


def test_legacy_bert_keys_are_tolerated(tmp_path):
    state = official_state_dict("tiny_glip_a")
    state["module.language_backbone.body.model.embeddings.position_ids"] = torch.arange(512)[None]
    state["module.language_backbone.body.model.pooler.dense.weight"] = torch.zeros(48, 48)
    state["module.language_backbone.body.model.pooler.dense.bias"] = torch.zeros(48)
    torch.save({"model": state, "iteration": 5}, tmp_path / "legacy.pth")
    model = load_model(
        tmp_path / "legacy.pth",
        OFFICIAL / "tiny_glip_a" / "config.yaml",
        text_encoder=tiny_text_encoder_dir("tiny_glip_a", tmp_path),
    )
    assert not model.training


def _load(path, config="tiny_glip_a", tmp_path=None, **kw):
    return load_model(
        path, OFFICIAL / config / "config.yaml", text_encoder=tiny_text_encoder_dir(config, tmp_path), **kw
    )


def test_truncated_state_dict_names_the_missing_keys(tmp_path):
    state = official_state_dict("tiny_glip_a")
    dropped = [k for k in state if "dyhead_tower.1." in k]
    for k in dropped:
        del state[k]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: trunk\.blocks\.1\.dyconv"):
        _load(tmp_path / "partial.pth", tmp_path=tmp_path)


def test_checkpoint_of_another_config_names_mis_shaped_keys(tmp_path):
    # GLIP-T (fusion) weights into the GLIP-A (no fusion) model: clear error, no partial load.
    with pytest.raises(CheckpointError, match="unexpected keys: trunk.blocks.0.fusion"):
        _load(OFFICIAL / "tiny_glip_t" / "model_official.pth", "tiny_glip_a", tmp_path)
    state = official_state_dict("tiny_glip_a")
    state["module.rpn.head.bbox_pred.weight"] = torch.zeros(4, 32, 3, 3)
    torch.save({"model": state}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: heads\.grounding\.bbox_pred\.weight \(4, 32, 3, 3\)"):
        _load(tmp_path / "shape.pth", tmp_path=tmp_path)


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a GLIP checkpoint: keys such as conv1.weight"):
        _load(tmp_path / "resnet.pth", tmp_path=tmp_path)


def test_corrupted_and_truncated_files(tmp_path):
    data = (OFFICIAL / "tiny_glip_a" / "model_official.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint" * 100)
    for name in ("cut.pth", "junk.pth"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            read_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")


class _Custom:
    pass


def test_unsafe_pickle_is_refused_with_the_opt_in_named(tmp_path):
    torch.save({"model": official_state_dict("tiny_glip_a"), "extra": _Custom()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_checkpoint(tmp_path / "pickled.pth")
    state = read_checkpoint(tmp_path / "pickled.pth", trust_pickle=True)
    assert "module.rpn.head.bias0" in state


def test_official_checkpoint_needs_a_config(tmp_path):
    with pytest.raises(CheckpointError, match="pass config="):
        load_model(OFFICIAL / "tiny_glip_a" / "model_official.pth")


def test_convert_cli_round_trip(tmp_path, tiny_model_factory):
    from glip.cli import main

    out = tmp_path / "converted"
    rc = main(
        [
            "convert",
            str(OFFICIAL / "tiny_glip_t" / "model_official.pth"),
            str(out),
            "--config",
            str(OFFICIAL / "tiny_glip_t" / "config.yaml"),
            "--text-encoder",
            str(tiny_text_encoder_dir("tiny_glip_t", tmp_path)),
        ]
    )
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.yaml", "text_encoder"}
    converted = load_model(out)
    original = tiny_model_factory("tiny_glip_t")
    for (k, a), (k2, b) in zip(converted.state_dict().items(), original.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    c = torch.load(OFFICIAL / "tiny_glip_t" / "case_astronaut.pth", weights_only=True)
    image = c["image_original_rgb_uint8"].numpy()
    a = converted.predict(image, c["caption"], threshold=0.0)
    b = original.predict(image, c["caption"], threshold=0.0)
    assert torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) and a.phrases == b.phrases


def test_convert_cli_reports_errors(tmp_path, capsys):
    from glip.cli import main

    (tmp_path / "junk.pth").write_bytes(b"junk")
    rc = main(
        [
            "convert",
            str(tmp_path / "junk.pth"),
            str(tmp_path / "out"),
            "--config",
            str(OFFICIAL / "tiny_glip_a" / "config.yaml"),
        ]
    )
    assert rc == 1
    assert "corrupt or truncated" in capsys.readouterr().err
