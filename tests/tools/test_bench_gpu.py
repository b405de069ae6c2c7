"""scripts/bench_gpu.py, the prepared GPU check, in its CPU smoke version: every section runs
and reports what the GPU run will report (throughput per batch size and mode, autocast parity,
the fusion's FLOPs and rate)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_script, single_torch_thread


@pytest.fixture(autouse=True)
def one_thread():
    yield from single_torch_thread()


@pytest.mark.slow  # ~8 s (pytest -m slow)
def test_smoke_run_on_the_cpu(tmp_path, capsys):
    script = load_script("bench_gpu")
    out = tmp_path / "gpu.json"
    script.main([
        "--device", "cpu", "--model", "demo-shapes", "--prompt", "red circle. blue square. yellow triangle.",
        "--size", "128", "192", "--batch", "1", "2", "--runs", "1", "--images", "2",
        "--attention-size", "64", "96", "--peak-n", "128", "--out", str(out),
    ])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["peak"]["measured_tflops"] > 0 and result["peak"]["datasheet_tflops"] is None  # a CPU
    rows = {(r["mode"], r["batch"], r["fusion_chunk"]): r for r in result["throughput"]}
    assert len(rows) == len(result["throughput"]) == 6  # batch 2 once per fusion chunk (auto, 1)
    assert set(rows) == {(m, 1, "auto") for m in ("fp32", "bf16")} | {
        (m, 2, c) for m in ("fp32", "bf16") for c in ("auto", "1")
    }
    assert all(r["images_per_s"] > 0 and len(r["calls_s"]) == 1 for r in rows.values())
    assert rows["bf16", 2, "1"]["speedup_vs_batch1"] == pytest.approx(
        rows["bf16", 2, "1"]["images_per_s"] / rows["bf16", 1, "auto"]["images_per_s"]
    )
    (bf16,) = result["parity"]
    assert len(bf16["images"]) == 2
    for image in bf16["images"]:  # the trained demo: its detections have bf16 twins, close in score
        assert image["matched"] == image["of"] > 0 and image["top_phrase_agrees"]
        assert image["score_median"] < 0.01 and image["box_px_median"] < 0.5
    attention = {(r["what"], r["tokens"]): r for r in result["attention"]}
    assert set(attention) == {("attention", 256), ("block", 256), ("attention", 16), ("block", 16)}
    pixels = sum(-(-64 // s) * -(-96 // s) for s in (8, 16, 32, 64, 128))
    assert all(r["pixels"] == pixels and r["gflop"] > 0 for r in attention.values())
    # Trimming the text to 16 tokens cuts the attention's matrix work (most of it scales with T).
    assert attention["attention", 16]["gflop"] < attention["attention", 256]["gflop"] / 4
    r = attention["attention", 256]
    assert r["tflops"] == pytest.approx(r["gflop"] / r["median_ms"])  # GFLOP / ms = TFLOP/s
    assert r["fraction_of_measured_peak"] == pytest.approx(r["tflops"] / result["peak"]["measured_tflops"])
    assert "fusion attention" in capsys.readouterr().out


def test_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    script = load_script("bench_gpu")
    with pytest.raises(SystemExit) as e:
        script.main([])
    assert e.value.code == 2 and "no CUDA device is visible" in capsys.readouterr().err
