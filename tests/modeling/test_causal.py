"""Causal (captioning) mode: no token sees a later one, through the text layers or the image.

The model is the golden tiny GLIP (every GLIP-T switch on) with a captioning head, weights
refilled by name; changing a later token must leave every earlier token's MLM logits
bit-identical, in eval (re-associated fusion) and train (projected fusion) mode.
"""

from __future__ import annotations

import pytest
import torch

from glip.modeling.fusion.bi_attention import BiAttentionBlock
from glip.modeling.heads.caption import CAPTION
from glip.modeling.language.causal import additive_attention_mask, causal_keep_mask


def _ids(model, caption: str, width: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    enc = model.tokenizer([caption], padding="max_length", max_length=width, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _all_logits(model, features, ids, mask, causal: bool) -> torch.Tensor:
    with torch.no_grad():
        out = model.forward_features(features, ids, mask, heads=(CAPTION,), causal=causal)
        return model.heads[CAPTION].predictor(out.heads[CAPTION].hidden)  # [1, T, V]


@pytest.mark.parametrize("training", [False, True])
def test_a_later_token_never_changes_earlier_logits(captioner, training: bool) -> None:
    model, features = captioner
    ids, mask = _ids(model, "a red square left of a blue circle")
    changed = ids.clone()
    k = 5  # the 5th word piece after [CLS]
    changed[0, k] = model.tokenizer.convert_tokens_to_ids("triangle")
    assert changed[0, k] != ids[0, k]
    model.train(training)
    try:
        before = _all_logits(model, features, ids, mask, causal=True)
        after = _all_logits(model, features, changed, mask, causal=True)
        # Bidirectional: the change reaches the earlier tokens (so the check below has teeth).
        both_before = _all_logits(model, features, ids, mask, causal=False)
        both_after = _all_logits(model, features, changed, mask, causal=False)
    finally:
        model.eval()
    assert torch.equal(before[:, :k], after[:, :k])  # bit-identical
    assert not torch.equal(before[:, k], after[:, k])
    assert not torch.equal(both_before[:, :k], both_after[:, :k])


def test_appending_tokens_never_changes_earlier_logits(captioner) -> None:
    """What decoding relies on: the logits of a prefix do not depend on what follows it
    (here a longer caption, padded to the same width)."""
    model, features = captioner
    short_ids, short_mask = _ids(model, "a red square")
    long_ids, long_mask = _ids(model, "a red square left of a blue circle")
    n = int(short_mask.sum()) - 1  # [CLS] a red square (the short one's [SEP] is a word in the long one)
    short = _all_logits(model, features, short_ids, short_mask, causal=True)
    long = _all_logits(model, features, long_ids, long_mask, causal=True)
    assert torch.equal(short[:, :n], long[:, :n])


def test_the_image_update_would_leak_later_tokens(captioner, monkeypatch) -> None:
    """Causal text attention alone is not enough: with the X-MHA image update left on, a
    later token reaches an earlier one through the pixels of the next block."""
    model, features = captioner
    original = BiAttentionBlock.forward
    monkeypatch.setattr(
        BiAttentionBlock, "forward", lambda self, v, t, m, causal=False, **kw: original(self, v, t, m, **kw)
    )
    ids, mask = _ids(model, "a red square left of a blue circle")
    changed = ids.clone()
    changed[0, 5] = model.tokenizer.convert_tokens_to_ids("triangle")
    before = _all_logits(model, features, ids, mask, causal=True)
    after = _all_logits(model, features, changed, mask, causal=True)
    assert not torch.equal(before[:, 1:5], after[:, 1:5])


def test_causal_fusion_leaves_the_image_untouched_by_text() -> None:
    torch.manual_seed(0)
    block = BiAttentionBlock(8, 6, embed_dim=16, num_heads=2, dropout=0.0).eval()
    visual = [torch.randn(1, 8, 4, 5), torch.randn(1, 8, 2, 3)]
    mask = torch.ones(1, 4, dtype=torch.int64)
    a = block(visual, torch.randn(1, 4, 6), mask, causal=True)
    b = block(visual, torch.randn(1, 4, 6), mask, causal=True)
    for va, vb, v in zip(a.visual, b.visual, visual):
        assert torch.equal(va, vb)
        # v = LN_v(v): the normalised input, no text-driven residual
        flat = v.flatten(2).transpose(1, 2)  # [1, HW, C]
        torch.testing.assert_close(va.flatten(2).transpose(1, 2), block.norm_v(flat))
    # the default mode does let the text into the image
    c = block(visual, torch.randn(1, 4, 6), mask)
    d = block(visual, torch.randn(1, 4, 6), mask)
    assert not torch.equal(c.visual[0], d.visual[0])


def test_masks_on_a_hand_case() -> None:
    mask = torch.tensor([[1, 1, 1, 0]])
    keep = causal_keep_mask(mask)
    expected = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]], dtype=torch.bool)
    assert torch.equal(keep, expected)
    add = additive_attention_mask(mask, torch.float32, causal=True)
    assert add.shape == (1, 1, 4, 4)
    assert torch.equal(add[0, 0] == 0, expected[0])
    assert add.min() == torch.finfo(torch.float32).min
    assert additive_attention_mask(mask, torch.float32).shape == (1, 1, 1, 4)
