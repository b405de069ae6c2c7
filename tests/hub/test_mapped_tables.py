"""Large embedding tables stay in their file's mapping (glip.hub.streaming.sparse_tables)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from glip.hub.checkpoint import read_checkpoint
from glip.hub.streaming import index_safetensors, mapped_file, sparse_tables, stream_state_into
from tests.conftest import REPO
from tests.subprocesses import run_json

ROWS, WIDTH = 16384, 1024  # 64 MiB of float32


def _model() -> torch.nn.Module:
    model = torch.nn.Module()
    model.table = torch.nn.Embedding(ROWS, WIDTH)
    model.small = torch.nn.Embedding(8, WIDTH)
    model.proj = torch.nn.Linear(WIDTH, 4)
    return model


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) for k, v in _model().state_dict().items()}


def _load(path, kind: str) -> torch.nn.Module:
    model = _model()
    keep = sparse_tables(model)
    if kind == "safetensors":
        index = index_safetensors(path)
        stream_state_into(model, index.tensors, index, keep_mapped=keep)
    else:
        stream_state_into(model, read_checkpoint(path, mmap=True), mapped=mapped_file(path), keep_mapped=keep)
    return model


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_a_large_table_is_a_view_of_the_file_and_equal(tmp_path, kind) -> None:
    state = _state()
    path = tmp_path / f"w.{kind}"
    save_file(state, str(path)) if kind == "safetensors" else torch.save(state, path)
    assert sparse_tables(_model()) == {"table.weight"}  # not the small table, not a linear layer
    model = _load(path, kind)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    ranges = mapped_file(path).ranges
    inside = lambda t: any(a <= t.data_ptr() < b for a, b in ranges)  # noqa: E731
    assert inside(model.table.weight) and not inside(model.proj.weight)
    assert isinstance(model.table.weight, torch.nn.Parameter) and model.table.weight.requires_grad
    # Copy-on-write: training the table changes the model, never the file.
    with torch.no_grad():
        model.table.weight[0] += 1
    again = _load(path, kind)
    assert torch.equal(again.table.weight[0], state["table.weight"][0])


def test_a_shared_table_is_copied() -> None:
    model = _model()
    model.tied = torch.nn.Linear(WIDTH, ROWS, bias=False)
    model.tied.weight = model.table.weight
    assert sparse_tables(model) == set()


_RSS = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[3])
from tests.hub.test_mapped_tables import _load
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["VmRSS"].split()[0]) / 1024
torch.nn.functional.embedding(torch.arange(3), torch.ones(8, 4))  # the first op's own set-up
before = rss()
model = _load(sys.argv[1], sys.argv[2])
loaded = rss()
model.table(torch.arange(40, 57))  # a prompt's worth of rows, neighbours (a page-cache folio maps whole)
print(json.dumps({"loaded": loaded - before, "looked_up": rss() - before}))
"""


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_the_table_costs_the_rows_read_not_its_size(tmp_path, kind) -> None:
    """Resident set (own process) after loading a model with a 64 MiB table and looking up
    17 rows: the built model's fresh table (64 MiB) is replaced by the file's pages read.
    (The kernel maps a touched page cache folio whole, up to 2 MiB: scattered rows cost up
    to that each, so the rows here are neighbours.)"""
    state = _state()
    path = tmp_path / f"w.{kind}"
    save_file(state, str(path)) if kind == "safetensors" else torch.save(state, path)
    out = run_json(
        ["-c", _RSS, str(path), kind, str(REPO)], env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": ""}
    )
    assert out["looked_up"] < 16, out  # copied: >= 64 MiB
