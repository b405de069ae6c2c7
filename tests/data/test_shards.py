"""Shard sets: the split of an epoch over processes x workers, exact resume (kill -9
included), re-splitting on another world size, and bad input."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from glip.data.shards import Manifest, ShardError, ShardStream, open_shard_set
from glip.data.shards.convert import ShardSample, write_shard_set
from glip.data.shards.schema import make_record

REPO = Path(__file__).resolve().parents[2]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_keys_set(root: Path, n: int, shard_size: int) -> Manifest:
    """``n`` tiny samples whose image id is ``k<i>``, one 2 x 2 box each."""

    def samples():
        for i in range(n):
            rec = make_record(f"{i:05d}", {"id": f"k{i}", "file_name": "", "caption": "a"}, [{"bbox": [0, 0, 2, 2]}])
            yield ShardSample(f"{i:05d}", _png(i % 250), "png", rec)

    return write_shard_set(samples(), root, shard_size, source="test", kind="grounding")


class KeyBuilder:
    """Builds a sample that is just its image id (the json datasets' ``build`` contract)."""

    def build(self, image, record, anns, rng):
        return SimpleNamespace(key=record["id"], index=-1)


def keys_stream(root: Path, seed: int = 0) -> ShardStream:
    return ShardStream(open_shard_set(root), KeyBuilder(), seed)


def sampler(epoch=0, start=0, batch=3, rank=0, world=1, seed=0):
    return SimpleNamespace(epoch=epoch, start_batch=start, local_batch=batch, rank=rank, world_size=world, seed=seed)


def collate(samples):
    return [s.key for s in samples]


def read(stream, workers=2, **kw):
    return list(stream.loader(sampler(**kw), collate, workers))


def test_two_processes_read_every_sample_once_per_epoch(tmp_path):
    write_keys_set(tmp_path, 36, shard_size=5)  # 8 shards, the last one short
    stream = keys_stream(tmp_path)
    epochs = []
    for epoch in (0, 1):
        per_rank = [read(stream, epoch=epoch, rank=r, world=2) for r in (0, 1)]
        assert [len(b) for b in per_rank] == [6, 6]  # 36 // (3 x 2) steps on each process
        keys = [k for batches in per_rank for b in batches for k in b]
        assert sorted(keys) == sorted(f"k{i}" for i in range(36)) and len(set(keys)) == 36
        epochs.append(keys)
    assert epochs[0] != epochs[1]  # a new shard order each epoch
    assert read(stream, epoch=1, rank=1, world=2) == read(stream, epoch=1, rank=1, world=2)  # deterministic


def test_incomplete_last_batch_is_left_out(tmp_path):
    write_keys_set(tmp_path, 20, shard_size=4)
    keys = [k for b in read(keys_stream(tmp_path), world=1, batch=3) for k in b]
    assert len(keys) == 18 and len(set(keys)) == 18  # 20 // 3 batches of 3


def test_resume_mid_epoch_on_the_same_and_another_split(tmp_path):
    write_keys_set(tmp_path, 48, shard_size=7)
    stream = keys_stream(tmp_path)
    full = read(stream, epoch=2, batch=2)
    assert read(stream, epoch=2, batch=2, start=5) == full[5:]  # round-robin continues at worker 5 mod 2
    # 2 processes x 2 workers stopped after 3 steps; the rest is re-split over 1 process x 2 workers.
    seen = [k for r in (0, 1) for b in read(stream, epoch=2, batch=2, world=2, rank=r)[:3] for k in b]
    state = stream.state(epoch=2, consumed=3, local_batch=2, world_size=2, workers=2)
    assert state["cursors"] == [2, 1]
    other = keys_stream(tmp_path)
    assert other.resume(state, local_batch=2, world_size=1, workers=2) == 0
    rest = [k for b in read(other, epoch=2, batch=2) for k in b]
    assert sorted(seen + rest) == sorted(f"k{i}" for i in range(48))  # nothing lost or read twice


_RANK_READER = """
import json, sys
sys.path.insert(0, {tests!r})
from test_shards import keys_stream, sampler, collate
root, rank, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
batches = list(keys_stream(root).loader(sampler(epoch=1, rank=rank, world=2), collate, 2))
open(out, "w").write(json.dumps(batches))
"""


def test_two_os_processes_with_two_workers_each_read_every_sample_once(tmp_path):
    """Two real processes (ranks 0 and 1 of 2, started together, two loader workers each):
    the union of their keys is the set and no key is read twice."""
    write_keys_set(tmp_path / "set", 30, shard_size=4)
    script = tmp_path / "rank_reader.py"
    script.write_text(_RANK_READER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "set"), str(r), str(tmp_path / f"r{r}.json")], env=env
        )
        for r in (0, 1)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    keys = [k for r in (0, 1) for b in json.loads((tmp_path / f"r{r}.json").read_text()) for k in b]
    assert len(keys) == 30 and sorted(keys) == sorted(f"k{i}" for i in range(30))  # 30 // (3 x 2) = 5 steps each


_READER = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
from test_shards import keys_stream, sampler, collate
root, log, ckpt = sys.argv[1:4]
stream = keys_stream(root)
state = json.load(open(ckpt)) if os.path.exists(ckpt) else None
start = stream.resume(state, 2, 1, 2) if state else 0
consumed = start
with open(log, "a") as f:
    for batch in stream.loader(sampler(epoch=0, start=start, batch=2), collate, 2):
        f.write(json.dumps(batch) + "\\n"); f.flush(); os.fsync(f.fileno())
        consumed += 1
        if consumed % 3 == 0:  # a checkpoint, written atomically
            with open(ckpt + ".tmp", "w") as c:
                json.dump(stream.state(0, consumed, 2, 1, 2), c)
            os.replace(ckpt + ".tmp", ckpt)
        time.sleep(float(os.environ.get("READER_SLEEP", "0")))
"""


def test_kill_9_mid_epoch_then_resume_reads_what_an_uninterrupted_run_reads(tmp_path):
    write_keys_set(tmp_path / "set", 40, shard_size=6)
    script = tmp_path / "reader.py"
    script.write_text(_READER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log, ckpt = tmp_path / "log.jsonl", tmp_path / "ckpt.json"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "set"), str(log), str(ckpt)],
                            env={**env, "READER_SLEEP": "0.1"})  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and not (ckpt.exists() and len(log.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    consumed = json.loads(ckpt.read_text())["consumed"]
    assert 3 <= consumed < 20
    kept = log.read_text().splitlines()[:consumed]  # batches after the checkpoint are read again
    log.write_text("".join(line + "\n" for line in kept))
    subprocess.run([sys.executable, str(script), str(tmp_path / "set"), str(log), str(ckpt)], env=env, check=True)
    resumed = [json.loads(line) for line in log.read_text().splitlines()]
    assert resumed == read(keys_stream(tmp_path / "set"), batch=2)


def test_corrupt_members_are_skipped_and_logged(tmp_path, caplog):
    write_keys_set(tmp_path, 6, shard_size=6)
    shard = tmp_path / "shard-000000.tar"
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read()
            if m.name == "00001.png":
                data = b"not a png"
            if m.name == "00004.json":
                data = b"{broken"
            members.append((m, data))
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    manifest = Manifest.read(tmp_path / "manifest.json")
    manifest.shards[0].bytes = shard.stat().st_size  # the members changed size
    manifest.write()
    with caplog.at_level(logging.WARNING):
        batches = read(keys_stream(tmp_path), workers=0, batch=3)
    assert sorted(k for b in batches for k in b) == ["k0", "k2", "k3", "k5"]
    text = caplog.text
    assert "00001 skipped" in text and "00004 skipped" in text and "2 unreadable samples skipped" in text


def test_truncated_tar_is_an_error_naming_the_shard(tmp_path):
    write_keys_set(tmp_path, 8, shard_size=8)
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    manifest = Manifest.read(tmp_path / "manifest.json")
    manifest.shards[0].bytes = shard.stat().st_size
    manifest.write()
    with pytest.raises(ShardError, match="shard-000000.tar"):
        read(keys_stream(tmp_path), workers=0, batch=2)


def test_manifest_that_disagrees_with_its_shards_is_one_line(tmp_path):
    write_keys_set(tmp_path, 8, shard_size=4)
    (tmp_path / "shard-000001.tar").write_bytes((tmp_path / "shard-000001.tar").read_bytes() + b"\0" * 512)
    with pytest.raises(ValueError, match=r"disagrees with shard-000001.tar") as e:
        open_shard_set(tmp_path)
    assert "\n" not in str(e.value)
    manifest = Manifest.read(tmp_path / "manifest.json")
    manifest.shards[1].bytes = -1
    manifest.shards[1].samples = 5  # one more than the shard holds
    manifest.write()
    with pytest.raises(ShardError, match="shard-000001.tar holds 4 samples; its manifest lists 5"):
        read(keys_stream(tmp_path), workers=0, batch=9)
    (tmp_path / "shard-000001.tar").unlink()
    with pytest.raises(ValueError, match="lists shard-000001.tar, which is missing"):
        open_shard_set(tmp_path / "manifest.json")


def test_open_by_folder_manifest_or_glob(tmp_path):
    write_keys_set(tmp_path, 10, shard_size=4)
    assert open_shard_set(tmp_path).num_samples == 10
    assert open_shard_set(tmp_path / "manifest.json").num_samples == 10
    assert [s.name for s in open_shard_set(str(tmp_path / "shard-00000[01].tar")).shards] == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no manifest.json in"):
        open_shard_set(tmp_path / "empty")
