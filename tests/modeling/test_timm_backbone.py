"""``model.backbone.type: timm``: a timm ConvNeXt's stride-8/16/32 maps feed the FPN;
pretrained weights only from local files, a one-line error otherwise (training and
save/load: tests/engine/test_new_encoders.py)."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm)")

from glip.modeling.backbone import TimmBody, TimmWeightsError, build_timm  # noqa: E402
from glip.modeling.backbone.timm_body import create_timm_body, timm_weights_file  # noqa: E402

NAME = "convnext_atto"  # 3.4 M parameters, the smallest ConvNeXt


def test_body_gives_c3_c5_to_the_fpn() -> None:
    backbone = build_timm(NAME, out_channels=32, fpn_drop_prob=0.0)
    assert isinstance(backbone.body, TimmBody) and backbone.body.out_channels == [80, 160, 320]
    features, body = backbone.forward_with_body(torch.zeros(2, 3, 64, 96))
    assert [tuple(m.shape) for m in body] == [(2, 80, 8, 12), (2, 160, 4, 6), (2, 320, 2, 3)]
    assert [tuple(m.shape[-2:]) for m in features] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert all(m.shape[:2] == (2, 32) for m in features)


def test_channels_last_maps_are_permuted_and_strides_checked() -> None:
    class Stub(torch.nn.Module):
        class feature_info:  # noqa: N801 - timm's attribute
            @staticmethod
            def reduction():
                return [4, 8, 16, 32]

            @staticmethod
            def channels():
                return [1, 2, 3, 4]

        def forward(self, x):
            return [torch.zeros(x.shape[0], 16 // s, 24 // s, c) for s, c in ((4, 1), (8, 2), (16, 3), (32, 4))]

    out = TimmBody(Stub(), channels_last_output=True)(torch.zeros(1, 3, 64, 96))
    assert [tuple(m.shape) for m in out] == [(1, 2, 2, 3), (1, 3, 1, 1), (1, 4, 0, 0)]
    Stub.feature_info.reduction = staticmethod(lambda: [2, 4, 8, 16])
    with pytest.raises(ValueError, match="strides"):
        TimmBody(Stub())


def test_pretrained_weights_come_from_a_local_file_only(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model(NAME)
    with torch.no_grad():
        reference.stem[0].weight.fill_(0.25)
    file = tmp_path / "convnext_atto.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(file))
    body = create_timm_body(NAME, pretrained=True, checkpoint=str(file))
    assert torch.equal(body.model.stem_0.weight, reference.stem[0].weight)
    # Not cached and no file: one line saying how to get them (no download attempted).
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(TimmWeightsError) as err:
        timm_weights_file(NAME)
    assert "not in the Hugging Face cache" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not a timm model"):
        create_timm_body("no_such_net")
