"""scripts/make_demo.py: the demo recipe from scratch, its stages, their order and resuming."""

from __future__ import annotations

import argparse
import sys
from operator import attrgetter
from pathlib import Path

import pytest

from glip.config import load_config
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "glip" / "assets" / "demo-shapes" / "config.yaml"


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = dict(work=str(tmp_path / "w"), out=str(tmp_path / "out"), seed=0, trunk_steps=2000,
                answer_steps=4000, caption_steps=6000, threads=2)  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_the_recipe_trains_the_heads_the_shipped_model_has(tmp_path: Path) -> None:
    """Every KEY=VALUE a stage sets under model.heads is what the bundled folder's config
    says, so the recipe makes the shipped architecture (a change to one must change both)."""
    groups = load_script("make_demo").plan(_args(tmp_path))
    assert [[s.name for s in g] for g in groups] == [["detector"], ["trunk"], ["answer", "caption"], ["final"]]
    shipped = load_config(SHIPPED)
    # (The caption stage turns the answer head off: it has no questions to build its answers from.)
    overrides = [a for g in groups for s in g for a in s.argv if a.startswith("model.heads.") and "enabled" not in a]
    assert len(overrides) == 5
    for item in overrides:
        key, value = item.split("=")
        assert str(attrgetter(key)(shipped)) == value, item
    final = groups[-1][0].argv
    assert final[final.index("--caption-beam") + 1] == str(shipped.model.heads.caption.beam_size)
    assert final[final.index("--caption-rerank") + 1] == shipped.model.heads.caption.rerank
    # Each stage starts from the one before; the final one takes both heads.
    by_name = {s.name: s for g in groups for s in g}
    for name, start in (("trunk", "detector"), ("answer", "trunk"), ("caption", "trunk"), ("final", "trunk")):
        argv = by_name[name].argv
        assert argv[argv.index("--from") + 1] == str(by_name[start].output)
    assert final[final.index("--heads-from") + 1] == str(by_name["answer"].output)
    assert final[final.index("--caption-from") + 1] == str(by_name["caption"].output)
    # Side by side, the two head stages share the threads.
    assert [s.threads for s in groups[2]] == [1, 1]


def _fake_plan(tmp_path: Path, fail: str | None = None):
    """Stages that count their runs and write a zoo folder (or fail, for ``fail``)."""
    make_demo = load_script("make_demo")

    def plan(args):
        groups = []
        for names in (["a"], ["b", "c"], ["d"]):
            group = []
            for name in names:
                out = tmp_path / name
                code = (
                    f"import pathlib,sys; p=pathlib.Path({str(out)!r}); p.mkdir(exist_ok=True);"
                    f"c=p/'runs'; c.write_text(str(int(c.read_text()) + 1 if c.exists() else 1));"
                    + ("print('step 1\\rstep 2\\rboom'); sys.exit(3)" if name == fail else "(p/'model.safetensors').write_text('');"
                       "(p/'config.yaml').write_text('')")
                )  # fmt: skip
                group.append(make_demo.Stage(name, (sys.executable, "-c", code), out, 1))
            groups.append(group)
        return groups

    return make_demo, plan


def test_a_finished_stage_is_skipped_and_a_failed_one_stops_the_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_demo, plan = _fake_plan(tmp_path, fail="c")
    monkeypatch.setattr(make_demo, "plan", plan)
    monkeypatch.setattr(sys, "argv", ["make_demo.py", "--work", str(tmp_path / "w")])
    assert make_demo.main() == 1
    out = capsys.readouterr().out
    assert "c stopped (exit 3)" in out and "  boom" in out and "step 1" not in out
    assert not (tmp_path / "d").exists()  # nothing after the failed group ran
    # Mended, the same command resumes: a and b are not run again.
    make_demo, plan = _fake_plan(tmp_path)
    monkeypatch.setattr(make_demo, "plan", plan)
    assert make_demo.main() == 0
    runs = {n: int((tmp_path / n / "runs").read_text()) for n in "abcd"}
    assert runs == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert "a: done" in capsys.readouterr().out
    recorded = (tmp_path / "w" / "recipe.json").read_text()
    assert '"b+c"' in recorded and '"d"' in recorded
