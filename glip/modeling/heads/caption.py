"""GLIPv2 captioning head: masked-token prediction on the causal fused text.

GLIPv2 (arXiv 2206.05836) captions with the trunk it grounds with: the text encoder and
every fusion layer run uni-directionally (:mod:`glip.modeling.language.causal`), random caption
tokens are replaced by ``[MASK]`` and predicted by an MLM head (:class:`MLMHead`) on the
fused text, with label smoothing; decoding appends a ``[MASK]`` and predicts it, step by
step (:mod:`glip.modeling.caption_decoding`). The official repository has no captioning
code; the recipe of which tokens are masked is OSCAR's / VinVL's (their captioning
fine-tuning, the one GLIPv2 reports against): ``round(0.15 x caption tokens)`` of them,
at least one and at most three, any caption token but ``[CLS]``, the end token ``[SEP]``
included (so the model learns to stop), always replaced by ``[MASK]``.

Dimension letters: B captions, T tokens, D text width, V vocabulary, S scored tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.modeling.fusion.trunk import TrunkOutput
from glip.modeling.heads.base import TEXT_SOURCES, Head, LossInputs, MaskedTokens
from glip.modeling.heads.mlm import BERT_MASK_TOKEN_ID, MLMHead
from glip.text.masking import IGNORE_INDEX

__all__ = [
    "CAPTION",
    "CAPTIONING",
    "CaptionHead",
    "CaptionOutput",
    "CausalTextContext",
    "NextTokenScores",
    "RERANKERS",
    "mask_caption_tokens",
    "restrict_vocabulary",
]

# The name of the captioning head in ``GLIP.heads``.
CAPTION = "caption"
# The sample kind of captioning data (glip.data.captions.CAPTIONING): the head's own batches.
CAPTIONING = "captioning"
# How a beam's finished captions are chosen (glip.inference.captioning.caption_image):
# "none", the likeliest (GLIPv2); "grounding", the one whose least grounded noun phrase
# scores highest with the caption as the prompt; "contrastive", the same with the noun
# phrases of all the candidates in one prompt (each phrase against the others').
RERANKERS = ("none", "grounding", "contrastive")


def mask_caption_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    generators: Sequence[torch.Generator],
    mask_token_id: int,
    mask_prob: float = 0.15,
    max_masked: int = 3,
) -> MaskedTokens:
    """Masks ``min(max(round(mask_prob x n), 1), max_masked)`` of each caption's ``n``
    maskable tokens (real tokens after ``[CLS]``: the words and the end token), chosen
    uniformly without replacement from the caption's own generator.

    Args:
        input_ids, attention_mask: ``Tensor[B, T]``, each caption ``[CLS] words [SEP]`` then padding.
        generators: B CPU generators (one per caption: the draws depend only on its seed).
        mask_token_id: the ``[MASK]`` id.
        mask_prob, max_masked: see above.
    """
    if len(generators) != input_ids.shape[0]:
        raise ValueError(f"need one generator per caption: got {len(generators)} for {input_ids.shape[0]}")
    ids = input_ids.clone()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for b, g in enumerate(generators):
        n = int((attention_mask[b] != 0).sum()) - 1  # maskable: positions 1..n
        if n < 1:
            continue
        count = min(max(round(mask_prob * n), 1), max_masked, n)
        slots = torch.randperm(n, generator=g)[:count] + 1  # [count]
        slots = slots.to(input_ids.device)
        labels[b, slots] = input_ids[b, slots]
        ids[b, slots] = mask_token_id
    return MaskedTokens(input_ids=ids, labels=labels)


class CausalTextContext(nn.Module):
    """Causal self-attention layers over the fused text: each token reads the tokens up to
    itself. A captioning head on a frozen trunk (the demo's: its text encoder frozen and run
    causally, its fusion trained for grounding) has no trained view of the words already
    written without it: the demo's decoder, trained without one, repeated and skipped words
    ("a a green and and circle circle"). Each layer is a post-norm
    :class:`torch.nn.TransformerEncoderLayer` (feed-forward width 2D, GELU) under a causal mask.

    Args:
        dim: D, the text width.
        num_layers: the layers (at least 1).
        num_heads: attention heads (``dim`` must divide by it).
        layer_norm_eps: the layers' LayerNorm epsilon.
        dropout: in training.
        max_positions: learned position embeddings (GPT-style) added to the input, for up
            to this many tokens (0: none). The fused text's own positions are weak after a
            frozen causal encoder: without them the demo's context could not find the word
            just before a ``[MASK]`` (teacher-forced, it never named the second shape's colour).

    ``forward(text)``: ``Tensor[B, T, D]`` -> ``Tensor[B, T, D]``; token ``i``'s output
    depends on tokens ``<= i`` only (padding after a caption is never read by its tokens).
    Parameters: ``layers.*``, ``position`` (with ``max_positions``).
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 1,
        num_heads: int = 4,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.1,
        max_positions: int = 0,
    ) -> None:
        super().__init__()
        if num_layers < 1 or dim % num_heads:
            raise ValueError(f"a causal text context needs >= 1 layer and a width divisible by its heads: "
                             f"{num_layers} layers, width {dim}, {num_heads} heads")  # fmt: skip
        self.position = nn.Embedding(max_positions, dim) if max_positions > 0 else None
        if self.position is not None:
            nn.init.normal_(self.position.weight, std=0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                dim, num_heads, 2 * dim, dropout, activation="gelu", layer_norm_eps=layer_norm_eps, batch_first=True
            )
            for _ in range(num_layers)
        )

    def forward(self, text: Tensor) -> Tensor:
        length = text.shape[1]
        if self.position is not None:
            if length > self.position.num_embeddings:
                raise ValueError(
                    f"the caption context has {self.position.num_embeddings} positions, got {length} tokens"
                )
            text = text + self.position.weight[:length].to(text.dtype)  # [B, T, D]
        causal = nn.Transformer.generate_square_subsequent_mask(length, text.device, text.dtype)  # [T, T]
        for layer in self.layers:
            text = layer(text, src_mask=causal, is_causal=True)
        return text


@dataclass
class NextTokenScores:
    """The caption head's decoding of one step (:meth:`CaptionHead.postprocess`).

    Attributes:
        log_probs: ``Tensor[B, V]`` float32, the log-probabilities of the next token.
    """

    log_probs: Tensor


@dataclass
class CaptionOutput:
    """What the captioning head reads from the trunk.

    Attributes:
        hidden: ``Tensor[B, T, D]``, the fused text before L2 normalisation (the trunk's
            ``text``, through the head's visual read-out when it has one); meaningful for
            captioning only when the trunk ran causally.
        causal: whether it did.
    """

    hidden: Tensor
    causal: bool


class CaptionHead(Head):
    """The captioning head (``model.heads["caption"]``): an :class:`MLMHead` on the causal
    fused text. Parameters: ``predictor.*``, ``readout.*``, ``context.*``. It may start fresh from a
    checkpoint without it.

    It declares ``needs_causal_text`` with ``batch_kind`` ``"captioning"``: the training
    loop masks tokens of the captioning batches (:meth:`corrupt`) and runs the model
    causally with this head alone; :meth:`loss` is then ``loss_caption``
    (:meth:`caption_loss` on ``LossInputs.token_labels``). On the batches of the other
    tasks (bi-directional text) it returns nothing. :meth:`postprocess` gives the next
    token's log-probabilities, the step of :mod:`glip.modeling.caption_decoding`'s search.

    Args:
        hidden_dim: D, the text width.
        vocab_size: V.
        layer_norm_eps: BERT's ``layer_norm_eps``.
        mask_token_id: the tokenizer's ``[MASK]`` id (the builder sets the model tokenizer's).
        mask_prob, max_masked: :func:`mask_caption_tokens`'s settings.
        label_smoothing: of the cross-entropy (0.1, as GLIPv2's and OSCAR's captioning).
        max_length, beam_size: decoding defaults (:mod:`glip.modeling.caption_decoding`).
        rerank: how a beam's finished captions are chosen by default, one of
            :data:`RERANKERS` (:func:`glip.inference.captioning.caption_image`).
        box_threshold: grounded captioning: the least score of a noun phrase's box.
        readout: an optional :class:`~glip.modeling.heads.readout.VisualReadout` through
            which every token reads the trunk's visual maps before the predictor.
        context: an optional :class:`CausalTextContext` the fused text goes through first.
        text_source: ``"fused"``: the causal trunk's post-fusion text (GLIPv2); ``"encoder"``:
            the causal text encoder's output before the fusion (the head then sees the image
            through its read-out only, and a retrained fusion leaves its input unchanged).
        vocab: the token ids the decoder scores (None: all V). A caption model for a
            closed domain needs only its captions' words: the decoder then has one row
            per listed id (the demo model keeps 18 of 30522 rows: 11.7 M parameters fewer);
            every other token gets a logit of -inf (:func:`restrict_vocabulary`).
    """

    fresh_start = True
    fresh_parts = ("context",)  # a trained captioner may be given a context
    needs_causal_text = True
    batch_kind = CAPTIONING

    def __init__(
        self,
        hidden_dim: int,
        vocab_size: int,
        layer_norm_eps: float = 1e-12,
        mask_token_id: int = BERT_MASK_TOKEN_ID,
        mask_prob: float = 0.15,
        max_masked: int = 3,
        label_smoothing: float = 0.1,
        max_length: int = 20,
        beam_size: int = 1,
        box_threshold: float = 0.3,
        readout: nn.Module | None = None,
        vocab: Sequence[int] | None = None,
        context: nn.Module | None = None,
        text_source: str = "fused",
        rerank: str = "none",
    ) -> None:
        super().__init__()
        if rerank not in RERANKERS:
            raise ValueError(f"the caption head's rerank must be one of {RERANKERS}, got {rerank!r}")
        if text_source not in TEXT_SOURCES:
            raise ValueError(f"the caption head's text_source must be 'fused' or 'encoder', got {text_source!r}")
        if not 0.0 <= mask_prob <= 1.0 or max_masked < 1:
            raise ValueError(f"bad caption masking: mask_prob={mask_prob}, max_masked={max_masked}")
        if max_length < 1 or beam_size < 1:
            raise ValueError(f"max_length ({max_length}) and beam_size ({beam_size}) must be at least 1")
        if vocab is not None and (
            not vocab or len(set(vocab)) != len(vocab) or not 0 <= min(vocab) <= max(vocab) < vocab_size
        ):
            raise ValueError(f"the caption vocabulary must list distinct token ids in [0, {vocab_size})")
        self.predictor = MLMHead(hidden_dim, vocab_size if vocab is None else len(vocab), layer_norm_eps)
        self.vocab_size = vocab_size
        # vocab_ids: the scored ids ([V'] int64, a buffer); token_to_row: id -> decoder row, -1 when not scored.
        self.vocab = None if vocab is None else [int(i) for i in vocab]
        ids = torch.tensor(self.vocab if self.vocab is not None else [], dtype=torch.int64)
        rows = torch.full((vocab_size if self.vocab is not None else 0,), -1, dtype=torch.int64)
        rows[ids] = torch.arange(len(ids))
        self.register_buffer("vocab_ids", ids, persistent=False)
        self.register_buffer("token_to_row", rows, persistent=False)
        self.mask_token_id = mask_token_id
        self.mask_prob = mask_prob
        self.max_masked = max_masked
        self.label_smoothing = label_smoothing
        self.max_length = max_length
        self.beam_size = beam_size
        self.box_threshold = box_threshold
        self.readout = readout
        self.context = context
        self.text_source = text_source
        self.rerank = rerank

    @torch.no_grad()
    def corrupt(self, input_ids: Tensor, attention_mask: Tensor, generators: Sequence[torch.Generator]) -> MaskedTokens:
        """:func:`mask_caption_tokens` with this head's settings."""
        return mask_caption_tokens(
            input_ids, attention_mask, generators, self.mask_token_id, self.mask_prob, self.max_masked
        )

    def forward(self, trunk: TrunkOutput, outputs: Mapping[str, Any]) -> CaptionOutput:
        text = trunk.text if self.text_source == "fused" else trunk.text_input.embedded  # [B, T, D]
        hidden = text if self.context is None else self.context(text)  # [B, T, D]
        hidden = hidden if self.readout is None else self.readout(hidden, trunk.visual)  # [B, T, D]
        return CaptionOutput(hidden=hidden, causal=trunk.text_input.causal)

    def logits(self, output: CaptionOutput, positions: Tensor) -> Tensor:
        """``Tensor[B, V]``: the vocabulary scores at one position per caption.

        Args:
            positions: ``Tensor[B]`` int64 token indices.
        """
        rows = torch.arange(output.hidden.shape[0], device=output.hidden.device)
        scores = self.predictor(output.hidden[rows, positions.to(output.hidden.device)])  # [B, V or V']
        if self.vocab is None:
            return scores
        full = scores.new_full((scores.shape[0], self.vocab_size), float("-inf"))  # [B, V]
        return full.index_copy_(1, self.vocab_ids, scores)

    def caption_loss(self, output: CaptionOutput, labels: Tensor) -> Tensor:
        """Label-smoothed cross-entropy over the masked slots (mean over them; a connected
        zero when there is none), in float32.

        Args:
            output: the head's output of a causal forward.
            labels: ``Tensor[B, T]``, the original ids at the slots, -100 elsewhere.
        """
        if not output.causal:
            raise ValueError("the captioning loss needs the causal forward (GLIP.forward_features(causal=True))")
        labels = labels.to(output.hidden.device)
        scored = labels != IGNORE_INDEX  # [B, T]
        logits = self.predictor(output.hidden[scored]).float()  # [S, V or V']
        if logits.shape[0] == 0:
            return output.hidden.sum() * 0.0
        targets = labels[scored]  # [S]
        if self.vocab is not None:
            targets = self.token_to_row[targets]
            if bool((targets < 0).any()):
                missing = sorted({int(t) for t in labels[scored][targets < 0]})
                raise ValueError(f"caption token ids {missing[:5]} are not in the caption head's vocabulary")
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def loss(self, output: CaptionOutput, inputs: LossInputs) -> dict[str, Tensor]:
        """``{"loss_caption": Tensor[]}`` on a captioning batch (a causal forward, with
        ``inputs.token_labels``); nothing on the batches of the other tasks."""
        if not output.causal:
            return {}
        if inputs.token_labels is None:
            raise ValueError("the captioning loss needs the masked tokens' labels (LossInputs.token_labels)")
        return {"loss_caption": self.caption_loss(output, inputs.token_labels)}

    @torch.no_grad()
    def postprocess(self, output: CaptionOutput, positions: Tensor, banned: Sequence[int] = ()) -> NextTokenScores:
        """The next token's log-probabilities at one position per caption (float32), the
        ``banned`` ids (never generated) at -inf.

        Args:
            positions: ``Tensor[B]`` int64 token indices (the ``[MASK]`` slot).
        """
        logits = self.logits(output, positions).float()  # [B, V]
        logits[:, list(banned)] = float("-inf")
        return NextTokenScores(log_probs=logits.log_softmax(dim=-1))


def restrict_vocabulary(head: CaptionHead, token_ids: Sequence[int]) -> CaptionHead:
    """A copy of a trained ``head`` whose decoder scores ``token_ids`` only: its rows of
    the decoder, the rest dropped. Each kept token's logit is unchanged, so greedy and beam
    decoding give the same captions whenever they only ever chose listed tokens (list every
    word of the training captions and ``[SEP]``). Set ``model.heads.caption.vocab`` to the
    same ids in the model's config to save and load it."""
    if head.vocab is not None:
        raise ValueError("the caption head's vocabulary is already restricted")
    ids = sorted({int(i) for i in token_ids})
    new = CaptionHead(
        head.predictor.dense.in_features, head.vocab_size, head.predictor.norm.eps, head.mask_token_id,
        head.mask_prob, head.max_masked, head.label_smoothing, head.max_length, head.beam_size,
        head.box_threshold, head.readout, ids, head.context, head.text_source, head.rerank,
    )  # fmt: skip
    state = {k: v for k, v in head.predictor.state_dict().items() if not k.startswith("decoder.")}
    index = torch.tensor(ids, device=head.predictor.decoder.weight.device)
    state["decoder.weight"] = head.predictor.decoder.weight.detach()[index]
    state["decoder.bias"] = head.predictor.decoder.bias.detach()[index]
    new.predictor.load_state_dict(state)
    return new.to(head.predictor.decoder.weight.device)
