"""An official ``.pth`` (torch's zip format) is mapped and streamed into the built model, its
pages released tensor by tensor: the same tensors as ``torch.load`` + ``load_state_dict``,
without the whole pickle ever resident beside the model."""

from __future__ import annotations

import pytest
import torch

from glip.hub import streaming
from glip.hub.checkpoint import _to_our_keys, read_checkpoint
from glip.hub.loading import load_model
from glip.hub.streaming import mapped_file, release_mapped
from tests.conftest import OFFICIAL, REPO, tiny_text_encoder_dir
from tests.subprocesses import run_json


@pytest.mark.needs_fixtures
def test_official_pth_streams_to_the_tensors_of_torch_load(tmp_path, monkeypatch) -> None:
    """On the tiny official GLIP-T fixture: ``torch.load`` is called with ``mmap=True``, and
    the model holds bit-for-bit what the old path (whole ``torch.load``, ``load_state_dict``) gave."""
    path, config = OFFICIAL / "tiny_glip_t" / "model_official.pth", OFFICIAL / "tiny_glip_t" / "config.yaml"
    text = tiny_text_encoder_dir("tiny_glip_t", tmp_path)
    calls: list[dict] = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or load(*a, **k))
    released: list[bool] = []
    release = streaming.release_mapped
    monkeypatch.setattr(
        streaming, "release_mapped", lambda t, where: released.append(release(t, where)) or released[-1]
    )
    streamed = load_model(path, config, text_encoder=text).state_dict()
    assert [c.get("mmap") for c in calls] == [True]
    assert released and all(released)  # every tensor's pages went back after its copy
    assert mapped_file(path).ranges == ()  # and nothing keeps the file mapped after loading

    monkeypatch.setattr(torch, "load", load)
    reference = load_model(path, config, text_encoder=text)  # a second model, overwritten the old way
    with torch.no_grad():
        for p in reference.parameters():
            p.zero_()
    reference.load_state_dict(_to_our_keys(read_checkpoint(path), str(path)), strict=True)
    expected = reference.state_dict()
    assert list(streamed) == list(expected)
    for key, value in expected.items():
        assert streamed[key].dtype == value.dtype and torch.equal(streamed[key], value), key


def test_release_leaves_tensors_outside_the_mapping_alone(tmp_path) -> None:
    """Only pages of the mapped file are dropped: a tensor of this process's own memory (or
    a mapping of another file) keeps its values, and mapped values read back unchanged."""
    path = tmp_path / "w.pth"
    torch.save({"model": {"a": torch.arange(70_000, dtype=torch.float32)}}, path)
    mapped_tensor = read_checkpoint(path, mmap=True)["a"]
    where = mapped_file(path)
    assert where.ranges
    own = torch.arange(70_000, dtype=torch.float32)
    assert not release_mapped(own, where)
    assert torch.equal(own, torch.arange(70_000, dtype=torch.float32))
    assert release_mapped(mapped_tensor, where)
    assert torch.equal(mapped_tensor, torch.arange(70_000, dtype=torch.float32))  # faulted back from the file


_PEAK = r"""
import json, resource, sys, torch
from glip.hub.checkpoint import read_checkpoint
from glip.hub.streaming import mapped_file, stream_state_into
path, n = sys.argv[1], int(sys.argv[2])
model = torch.nn.Module()
for i in range(n):
    model.register_buffer(f"t{i}", torch.full((4 << 20,), -1.0))  # 16 MiB each, touched
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
state = read_checkpoint(path, mmap=True)
stream_state_into(model, state, mapped=mapped_file(path))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ok = all(torch.equal(getattr(model, f"t{i}"), torch.full((4 << 20,), float(i))) for i in range(n))
print(json.dumps({"delta_mib": (peak - before) / 1024, "equal": ok}))
"""


def test_streaming_a_pth_does_not_materialise_it(tmp_path) -> None:
    """Peak RSS while loading a 128 MiB .pth into an already-built module (own process):
    reading it whole (the old path) adds the file's size; streaming adds about one tensor."""
    n = 8
    path = tmp_path / "big.pth"
    torch.save({"model": {f"t{i}": torch.full((4 << 20,), float(i)) for i in range(n)}}, path)
    out = run_json(["-c", _PEAK, str(path), str(n)], env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert out["equal"]
    assert out["delta_mib"] < 48, out  # whole file: >= 128 MiB
