"""The torchvision probe, backend forcing, and the ops working with a broken torchvision installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from glip.ops import active_backends
from glip.ops import backend as backend_module
from glip.ops import deform_conv as deform_conv_module
from glip.ops import nms as nms_module
from glip.ops.backend import resolve_backend, torchvision_available, use_backend
from glip.ops.nms import nms

REPO = Path(__file__).resolve().parents[2]


def test_probe_runs_once() -> None:
    first = torchvision_available()
    assert isinstance(first, bool)
    assert torchvision_available() is first
    assert backend_module._probe_torchvision.cache_info().misses <= 1


def test_env_var_forces_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIP_DISABLE_TORCHVISION", "1")
    assert torchvision_available() is False
    assert resolve_backend() == "torch"
    with pytest.raises(RuntimeError, match="GLIP_DISABLE_TORCHVISION"):
        resolve_backend("torchvision")
    monkeypatch.setenv("GLIP_DISABLE_TORCHVISION", "0")
    assert torchvision_available() is backend_module._probe_torchvision()


def test_use_backend_forces_and_restores() -> None:
    automatic = resolve_backend()
    with use_backend("torch"):
        assert resolve_backend() == "torch"
        with use_backend(None):
            assert resolve_backend() == automatic
        assert resolve_backend() == "torch"
    assert resolve_backend() == automatic


def test_unknown_or_unavailable_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown ops backend"), use_backend("cuda"):
        pass
    with pytest.raises(ValueError, match="unknown ops backend"):
        nms(torch.zeros(1, 4), torch.zeros(1), 0.5, backend="numpy")
    if not torchvision_available():
        with pytest.raises(RuntimeError, match="unavailable"):
            resolve_backend("torchvision")


def test_backend_chosen_per_op_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """With torchvision usable: pure deformable conv on CPU, torchvision's kernels elsewhere."""
    monkeypatch.setattr(backend_module, "torchvision_available", lambda: True)
    assert active_backends("cpu") == {"deform_conv2d": "torch", "nms": "torchvision", "roi_align": "torchvision"}
    assert active_backends(torch.device("cpu")) == active_backends(None) == active_backends("cpu")
    assert active_backends("cuda") == {"deform_conv2d": "torchvision", "nms": "torchvision", "roi_align": "torchvision"}
    assert active_backends(torch.device("cuda", 1)) == active_backends("cuda:0") == active_backends("cuda")
    assert resolve_backend() == "torchvision"  # no op named: torchvision whenever usable
    with use_backend("torch"):
        assert active_backends("cuda") == {"deform_conv2d": "torch", "nms": "torch", "roi_align": "torch"}
    with pytest.raises(ValueError, match="unknown op"):
        resolve_backend(op="ps_roi_pool")
    monkeypatch.setattr(backend_module, "torchvision_available", lambda: False)
    assert active_backends("cuda") == {"deform_conv2d": "torch", "nms": "torch", "roi_align": "torch"}


def test_env_var_makes_every_op_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIP_DISABLE_TORCHVISION", "1")
    assert (
        active_backends("cpu")
        == active_backends("cuda")
        == {"deform_conv2d": "torch", "nms": "torch", "roi_align": "torch"}
    )


class _FakeCudaTensor(torch.Tensor):
    """A CPU tensor that reports a CUDA device, so the dispatch can be checked without a GPU."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda", 0)


class _Dispatched(Exception):
    pass


def test_ops_pass_their_device_to_the_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def spy(backend=None, *, op=None, device=None):
        seen.append((op, torch.device(device).type))
        raise _Dispatched  # stop before any device work: the fake CUDA tensor has CPU storage

    monkeypatch.setattr(deform_conv_module, "resolve_backend", spy)
    monkeypatch.setattr(nms_module, "resolve_backend", spy)
    x = torch.randn(1, 2, 5, 5)
    args = (torch.zeros(1, 18, 5, 5), torch.ones(1, 9, 5, 5), torch.randn(3, 2, 3, 3))
    fake_cuda = x.as_subclass(_FakeCudaTensor)
    assert fake_cuda.device.type == "cuda"
    boxes, scores = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0])
    for call in (
        lambda: deform_conv_module.modulated_deform_conv2d(x, *args),
        lambda: nms(boxes, scores, 0.5),
        lambda: nms_module.batched_nms(boxes, scores, torch.tensor([0]), 0.5),
        lambda: deform_conv_module.modulated_deform_conv2d(fake_cuda, *args),
        lambda: nms(boxes.as_subclass(_FakeCudaTensor), scores, 0.5),
    ):
        with pytest.raises(_Dispatched):
            call()
    assert seen == [
        ("deform_conv2d", "cpu"),
        ("nms", "cpu"),
        ("nms", "cpu"),
        ("deform_conv2d", "cuda"),
        ("nms", "cuda"),
    ]


_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import glip.ops.nms, glip.ops.deform_conv
    assert "torchvision" not in sys.modules, "importing the ops must not import torchvision"
    from glip.ops.backend import resolve_backend, torchvision_available
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
    keep = glip.ops.nms.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2], keep
    keep = glip.ops.nms.batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5)
    assert keep.tolist() == [0, 1, 2], keep
    x = torch.randn(1, 4, 6, 6)
    out = glip.ops.deform_conv.modulated_deform_conv2d(
        x, torch.zeros(1, 18, 6, 6), torch.ones(1, 9, 6, 6), torch.randn(5, 4, 3, 3), torch.zeros(5)
    )
    assert out.shape == (1, 5, 6, 6)
    assert torchvision_available() is False and resolve_backend() == "torch"
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:  # the fake package was the one found, and the probe survived it
        assert "does not exist" in str(error)
    else:
        raise AssertionError("the broken torchvision imported")
    print("ok")
    """
)


def test_ops_work_with_a_broken_torchvision(tmp_path: Path) -> None:
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {k: v for k, v in os.environ.items() if k != "GLIP_DISABLE_TORCHVISION"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


_FAKE_WORKING_OPS = textwrap.dedent(
    '''
    """A stand-in for a working torchvision: registers torchvision::nms and records the calls it receives."""
    import torch

    from glip.ops.deform_conv import modulated_deform_conv2d
    from glip.ops.nms import _nms_torch

    CALLS = []
    _lib = torch.library.Library("torchvision", "DEF")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("deform_conv2d(Tensor input) -> Tensor")


    def _nms(dets, scores, iou_threshold):
        CALLS.append("nms")
        return _nms_torch(dets, scores, iou_threshold)


    _lib.impl("nms", _nms, "CompositeExplicitAutograd")


    def deform_conv2d(input, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None):
        CALLS.append(("deform_conv2d", tuple(stride), tuple(padding), tuple(dilation)))
        k = weight.shape[2] * weight.shape[3]
        groups, dg = input.shape[1] // weight.shape[1], offset.shape[1] // (2 * k)
        return modulated_deform_conv2d(
            input, offset, mask, weight, bias, stride, padding, dilation, groups, dg, backend="torch"
        )
    '''
)

_DISPATCH_SCRIPT = textwrap.dedent(
    """
    import torch
    from glip.ops.backend import resolve_backend, torchvision_available
    from glip.ops.deform_conv import modulated_deform_conv2d
    from glip.ops.nms import batched_nms, nms
    assert torchvision_available() and resolve_backend() == "torchvision"
    import torchvision.ops
    torchvision.ops.CALLS.clear()  # drop the probe's call
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == nms(boxes, scores, 0.5, backend="torch").tolist() == [0, 2]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]
    x, w = torch.randn(2, 4, 7, 6), torch.randn(6, 2, 3, 3)
    offset, mask = torch.randn(2, 36, 4, 2), torch.rand(2, 18, 4, 2)
    args = (x, offset, mask, w, torch.randn(6), 2, 1, (1, 2), 2, 2)
    automatic = modulated_deform_conv2d(*args)  # on CPU the pure path is the faster one: no kernel call
    assert torchvision.ops.CALLS == ["nms", "nms"]
    native = modulated_deform_conv2d(*args, backend="torchvision")
    torch.testing.assert_close(native, modulated_deform_conv2d(*args, backend="torch"), rtol=0, atol=0)
    torch.testing.assert_close(native, automatic, rtol=0, atol=0)
    assert torchvision.ops.CALLS == ["nms", "nms", ("deform_conv2d", (2, 2), (1, 1), (1, 2))]
    print("ok")
    """
)


def test_dispatch_to_a_working_torchvision(tmp_path: Path) -> None:
    """The torchvision branch, wired to a fake torchvision whose ops record their arguments."""
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text("from torchvision import ops\n")
    (fake / "ops.py").write_text(_FAKE_WORKING_OPS)
    env = {k: v for k, v in os.environ.items() if k != "GLIP_DISABLE_TORCHVISION"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", _DISPATCH_SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
