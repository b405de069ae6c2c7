"""A caption head restricted to a closed vocabulary (``model.heads.caption.vocab``)."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.caption_decoding import greedy_decode
from glip.modeling.heads.caption import CAPTION, CaptionHead, CaptionOutput, restrict_vocabulary


def test_restricted_head_keeps_the_listed_logits_and_scores_nothing_else() -> None:
    torch.manual_seed(0)
    head = CaptionHead(16, 50).eval()
    out = CaptionOutput(hidden=torch.randn(2, 5, 16), causal=True)
    positions = torch.tensor([1, 3])
    small = restrict_vocabulary(head, [9, 3, 7])
    assert small.predictor.decoder.weight.shape == (3, 16) and small.vocab == [3, 7, 9]
    full, cut = head.logits(out, positions), small.logits(out, positions)
    assert cut.shape == (2, 50)
    assert torch.allclose(cut[:, [3, 7, 9]], full[:, [3, 7, 9]], atol=1e-6)  # a smaller matmul: rounding only
    assert torch.isinf(cut).sum() == 2 * 47
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 7, 9
    # The loss is the cross-entropy over the listed tokens (their rows 1 and 2).
    logits = torch.stack([full[0, [3, 7, 9]], full[1, [3, 7, 9]]]).float()
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2]), label_smoothing=head.label_smoothing)
    assert small.caption_loss(out, labels).item() == pytest.approx(expected.item(), abs=1e-5)
    labels[1, 3] = 11
    with pytest.raises(ValueError, match=r"\[11\] are not in the caption head's vocabulary"):
        small.caption_loss(out, labels)
    with pytest.raises(ValueError, match="already restricted"):
        restrict_vocabulary(small, [3])
    with pytest.raises(ValueError, match="distinct token ids"):
        CaptionHead(16, 50, vocab=[3, 3])


def test_decoding_with_the_words_it_chose_is_unchanged(captioner) -> None:
    """Greedy decoding over the full vocabulary, then over only the tokens it produced (and
    [SEP]): the same caption and score."""
    model, features = captioner
    full_head = model.heads[CAPTION]
    before = greedy_decode(model, features, max_length=5)
    model.heads[CAPTION] = restrict_vocabulary(full_head, [*before.token_ids, model.tokenizer.sep_token_id])
    try:
        after = greedy_decode(model, features, max_length=5)
    finally:
        model.heads[CAPTION] = full_head
    assert after.token_ids == before.token_ids
    assert after.score >= before.score - 1e-5  # the same logits, normalised over fewer tokens


def test_config_vocab_round_trips_through_a_saved_model(tmp_path) -> None:
    from glip.config import load_config
    from glip.engine.run import build_training_model
    from glip.hub.checkpoint import save_model
    from glip.hub.loading import load_model

    overrides = [
        "model.heads.vqa.enabled=false",
        "model.heads.mask.enabled=false",
        "model.heads.caption.vocab=[102, 1037, 2417]",
    ]
    model = build_training_model(load_config("configs/caption/synthetic.yaml", overrides))
    assert model.heads[CAPTION].predictor.decoder.out_features == 3
    loaded = load_model(save_model(model, tmp_path / "m", include_text_encoder=False), device="cpu")
    assert loaded.heads[CAPTION].vocab == [102, 1037, 2417]
    assert torch.equal(loaded.heads[CAPTION].predictor.decoder.weight, model.heads[CAPTION].predictor.decoder.weight)
