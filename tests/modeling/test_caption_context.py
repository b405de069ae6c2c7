"""The captioning head's causal text context (``model.heads.caption.context_layers``)."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.heads.caption import CAPTION, CaptionHead, CausalTextContext, restrict_vocabulary


@pytest.mark.parametrize("positions", [0, 8])
def test_a_token_reads_only_the_tokens_up_to_itself(positions: int) -> None:
    torch.manual_seed(0)
    context = CausalTextContext(16, num_layers=2, num_heads=4, max_positions=positions).eval()
    text = torch.randn(2, 6, 16)
    changed = text.clone()
    changed[:, 4:] = torch.randn(2, 2, 16)  # later tokens (and padding) differ
    out, again = context(text), context(changed)
    assert torch.allclose(out[:, :4], again[:, :4], atol=1e-6)
    assert not torch.allclose(out[:, 4:], again[:, 4:])
    earlier = text.clone()
    earlier[:, 1] += 1.0  # an earlier token reaches every later one
    assert not torch.allclose(context(earlier)[:, 2:], out[:, 2:])
    with pytest.raises(ValueError, match="divisible by its heads"):
        CausalTextContext(10, num_heads=4)


def test_positions_tell_a_token_where_it_is() -> None:
    """With position embeddings the same token at two places reads differently even with
    nothing before it that differs; too long a text is a one-line error."""
    torch.manual_seed(0)
    same = torch.randn(1, 1, 16).expand(1, 5, 16)  # one token repeated: no content tells the places apart
    plain = CausalTextContext(16, max_positions=0).eval()(same)
    placed_context = CausalTextContext(16, max_positions=8).eval()
    placed = placed_context(same)
    assert torch.allclose(plain[0, 1], plain[0, 4], atol=1e-5)
    assert not torch.allclose(placed[0, 1], placed[0, 4], atol=1e-3)
    assert placed_context.position.weight.shape == (8, 16)
    with pytest.raises(ValueError, match="8 positions, got 9 tokens"):
        placed_context(torch.randn(1, 9, 16))


def test_the_head_reads_the_context_and_keeps_it_when_its_vocabulary_is_cut() -> None:
    torch.manual_seed(0)
    head = CaptionHead(16, 50, context=CausalTextContext(16)).eval()
    small = restrict_vocabulary(head, [3, 7, 9])
    assert small.context is head.context


def test_the_encoder_text_source_reads_the_text_before_the_fusion() -> None:
    """``text_source="encoder"`` feeds the causal text encoder's output to the context (the
    fused text is ignored), survives a vocabulary cut, and an unknown source is refused."""
    from glip.modeling.fusion.trunk import TrunkOutput
    from glip.structures import TextFeatures

    torch.manual_seed(0)
    mask = torch.ones(1, 5, dtype=torch.int64)
    fused, encoded = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    feats = TextFeatures(hidden=encoded, embedded=encoded, mask=mask, aggregate=encoded.mean(1))
    trunk = TrunkOutput(visual=[], text=fused, features=[], text_input=feats)
    head = CaptionHead(16, 50, context=CausalTextContext(16), text_source="encoder").eval()
    assert torch.allclose(head(trunk, {}).hidden, head.context(encoded))
    assert restrict_vocabulary(head, [3, 7]).text_source == "encoder"
    head.text_source = "fused"
    assert torch.allclose(head(trunk, {}).hidden, head.context(fused))
    with pytest.raises(ValueError, match="text_source"):
        CaptionHead(16, 50, text_source="both")


def test_config_builds_saves_and_loads_the_context(tmp_path) -> None:
    from glip.config import load_config
    from glip.engine.run import build_training_model
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    overrides = ["model.heads.vqa.enabled=false", "model.heads.mask.enabled=false"]
    plain = build_training_model(load_config("configs/caption/synthetic.yaml", overrides))
    assert plain.heads[CAPTION].context is None  # off by default
    model = build_training_model(
        load_config(
            "configs/caption/synthetic.yaml",
            [*overrides, "model.heads.caption.context_layers=1", "model.heads.caption.context_positions=12"],
        )
    )
    assert model.heads[CAPTION].context.position.weight.shape == (12, model.config.model.text.dim)
    assert plain.heads[CAPTION].text_source == "fused"  # GLIPv2's, by default
    assert (
        build_training_model(
            load_config("configs/caption/synthetic.yaml", [*overrides, "model.heads.caption.text_source=encoder"])
        )
        .heads[CAPTION]
        .text_source
        == "encoder"
    )
    (layer,) = model.heads[CAPTION].context.layers
    assert layer.self_attn.embed_dim == model.config.model.text.dim
    loaded = load_model(save_model(model, tmp_path / "m", include_text_encoder=False), device="cpu")
    for key, value in model.heads[CAPTION].context.state_dict().items():
        assert torch.equal(loaded.heads[CAPTION].context.state_dict()[key], value), key


def test_a_trained_captioner_loads_with_a_fresh_context(tmp_path) -> None:
    """A checkpoint whose caption head has no context loads into a model that has one: the
    context starts from its initialisation, every other tensor from the checkpoint; a head
    missing other tensors is still refused."""
    from glip.config import load_config
    from glip.engine.run import build_training_model
    from glip.hub.checkpoint import CheckpointError, save_model
    from glip.hub.loading import load_model

    overrides = ["model.heads.vqa.enabled=false", "model.heads.mask.enabled=false"]
    trained = build_training_model(load_config("configs/caption/synthetic.yaml", overrides))
    folder = save_model(trained, tmp_path / "m", include_text_encoder=False)
    cfg = load_config(folder / "config.yaml", ["model.heads.caption.context_layers=1"])
    loaded = load_model(folder, config=cfg, device="cpu")
    assert loaded.heads[CAPTION].context is not None
    ours = trained.heads[CAPTION].predictor.state_dict()
    for key, value in loaded.heads[CAPTION].predictor.state_dict().items():
        assert torch.equal(value, ours[key]), key
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state[next(k for k in state if k.startswith("heads.caption.predictor."))]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError):
        load_model(folder, config=cfg, device="cpu")
