"""glip's BERT (glip.modeling.language.bert) against transformers' BertModel, bit for bit."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.language.bert import BertEncoder, bert_state_dict
from glip.modeling.language.causal import additive_attention_mask
from glip.modeling.language.text_encoder import BertTextEncoder, load_bert_config
from glip.text import resolve_text_encoder

transformers = pytest.importorskip("transformers")


def _config(hidden: int, heads: int, layers: int = 2, dropout: float = 0.0):
    return transformers.BertConfig(
        vocab_size=120,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        intermediate_size=2 * hidden,
        max_position_embeddings=40,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def _hf(config):
    config._attn_implementation = "eager"  # what glip's BERT ran on before (and the official code)
    return transformers.BertModel(config, add_pooling_layer=False)


def _inputs(vocab: int = 120):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


def _hf_layers(model, ids, mask, causal=False):
    attn = additive_attention_mask(mask, torch.float32, causal=True) if causal else mask
    return model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[1:]


@pytest.mark.parametrize("hidden,heads", [(64, 1), (96, 3), (128, 2)])  # head widths 64 (BERT-base), 32 (MiniLM), 64
def test_random_init_and_outputs_equal_transformers_bit_for_bit(hidden, heads):
    config = _config(hidden, heads)
    torch.manual_seed(1)
    ref = _hf(config).eval()
    after_ref = torch.rand(1)
    torch.manual_seed(1)
    ours = BertEncoder(config).eval()
    after_ours = torch.rand(1)
    # The same weights from the same seed, and the RNG left in the same state.
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    assert ref_state.keys() == our_state.keys()
    assert all(torch.equal(ref_state[k], our_state[k]) for k in ref_state)
    assert torch.equal(after_ref, after_ours)
    ids, mask = _inputs()
    with torch.no_grad():
        for causal in (False, True):
            expected = _hf_layers(ref, ids, mask, causal)
            got = ours(ids, mask, causal=causal, keep=config.num_hidden_layers)
            assert len(got) == len(expected)
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), causal


def test_training_mode_with_dropout_and_gradients_equal_transformers():
    config = _config(96, 3, dropout=0.1)
    torch.manual_seed(2)
    ref = _hf(config).train()
    ours = BertEncoder(config).train()
    ours.load_state_dict(ref.state_dict())
    ids, mask = _inputs()
    torch.manual_seed(3)
    expected = _hf_layers(ref, ids, mask)[-1]
    torch.manual_seed(3)
    got = ours(ids, mask)[-1]
    assert torch.equal(got, expected)
    expected.square().sum().backward()
    got.square().sum().backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    for k, p in ours.named_parameters():
        assert torch.equal(p.grad, ref_grads[k]), k


def test_pretrained_minilm_equals_transformers_and_draws_no_random_numbers():
    folder = resolve_text_encoder("all-MiniLM-L6-v2")
    ref = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False, attn_implementation="eager").eval()
    torch.manual_seed(4)
    first_draw = torch.rand(3)
    torch.manual_seed(4)
    encoder = BertTextEncoder.from_pretrained(folder).eval()
    assert torch.equal(torch.rand(3), first_draw)  # the load drew nothing from the RNG
    ids, mask = _inputs(30522)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        features = encoder(ids, mask)
    assert torch.equal(features.hidden, expected)
    assert encoder.dim == 384 and encoder.config.num_hidden_layers == 6


def test_checkpoint_names_of_other_bert_models_are_mapped():
    state = {
        "bert.embeddings.word_embeddings.weight": torch.zeros(1),
        "bert.embeddings.position_ids": torch.zeros(1),
        "bert.encoder.layer.0.output.LayerNorm.gamma": torch.zeros(1),
        "bert.encoder.layer.0.output.LayerNorm.beta": torch.zeros(1),
        "bert.pooler.dense.weight": torch.zeros(1),
        "cls.predictions.bias": torch.zeros(1),
    }
    assert sorted(bert_state_dict(state)) == [
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.output.LayerNorm.bias",
        "encoder.layer.0.output.LayerNorm.weight",
    ]


def test_a_folder_of_another_shape_is_a_one_line_error(tmp_path):
    folder = resolve_text_encoder("all-MiniLM-L6-v2")
    config = load_bert_config(folder)
    config.num_hidden_layers = 7
    with pytest.raises(ValueError, match="not a BERT of this config"):
        BertEncoder.from_pretrained(folder, config)
    with pytest.raises(FileNotFoundError, match="no BERT weights"):
        BertEncoder.from_pretrained(tmp_path, config)


def test_glip_inference_imports_no_transformers_modelling_code(tmp_path):
    """Loading the demo model and detecting imports neither transformers' modelling code nor
    torchvision's Python package (each pulls in torch._dynamo: ~240 MiB resident)."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys, numpy as np, glip
glip.predict(np.zeros((64, 64, 3), np.uint8), "a red circle.", model="demo-shapes")
heavy = ("transformers.modeling_utils", "torch._dynamo", "torchvision", "sympy", "scipy")
print(sorted(m for m in heavy if m in sys.modules), "transformers" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "True"]
