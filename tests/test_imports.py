"""Import hygiene: a light `import glip`, one-way layering, and a broken torchvision."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import OFFICIAL

PACKAGE = Path(__file__).resolve().parents[1] / "glip"

# Lower layers never import higher ones; modules of one rank-3 package never import another.
RANK = {
    "version": 0,
    "config": 0,
    "utils": 0,
    "configs": 0,
    "structures": 1,
    "ops": 1,
    "layers": 2,
    "text": 2,
    "modeling": 3,
    "data": 3,
    "evaluation": 3,
    "engine": 4,
    "hub": 4,
    "export": 4,
    "api": 5,
    "inference": 5,  # glip.inference: processor, predictor, decoding to user objects
    "hf": 5,  # glip.hf: the transformers classes over the api (Predictor)
    "vqa_api": 5,  # glip.answer (beside api.py)
    "captioning": 5,  # glip.caption (grounded captioning), beside the api
    "tools": 5,
    "cli": 6,
    "__main__": 6,  # python -m glip: the cli
    "train": 6,
}
SIBLINGS = {"modeling", "data", "evaluation"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n == "glip" or n.startswith("glip.")}


def test_layers_import_one_way():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.as_posix() == "__init__.py":
            continue
        top = rel.parts[0].removesuffix(".py")
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) < 2:
                problems.append(f"{rel}: imports the top-level glip package")
                continue
            target = parts[1]
            if target == top:
                continue
            if RANK[target] > RANK[top] or (target in SIBLINGS and top in SIBLINGS):
                problems.append(f"{rel} ({top}) imports {name} ({target})")
    assert problems == []


# Inside glip.modeling: building blocks (backbone, language/, losses' math...) < the fused
# trunk (fusion/) < the heads and losses packages < the model and the criterion < transfer
# and decoding < the builder.
MODELING_RANK = {
    "fusion": 1,
    "heads": 2,
    "losses": 2,
    "glip": 3,
    "criterion": 3,
    "transfer": 4,
    "caption_decoding": 4,
    "build": 5,
    "build_language": 5,  # the language heads' builders, part of the builder
}


def test_modeling_layers_import_one_way():
    problems = []
    root = PACKAGE / "modeling"
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.as_posix() == "__init__.py":
            continue
        own = MODELING_RANK.get(rel.parts[0].removesuffix(".py"), 0)
        for name in _imports(path):
            parts = name.split(".")
            if len(parts) < 3 or parts[1] != "modeling":
                continue
            if MODELING_RANK.get(parts[2], 0) > own:
                problems.append(f"modeling/{rel} imports {name}")
    assert problems == []


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (never executed, so no import edge)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """glip module -> the glip modules it imports, at module level or inside a function
    (both run sooner or later). ``from a import b`` is an edge to ``a.b`` when that is a
    module, else to ``a``; relative imports are resolved."""
    files = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_nodes(tree)
        package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package_parts[: len(package_parts) - node.level + 1] if node.level else []
                module = ".".join([*base, node.module] if node.module else base)
                targets.update(f"{module}.{a.name}" if f"{module}.{a.name}" in files else module for a in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    """No two glip modules import each other, directly or through others, at module level
    or lazily inside a function (a lazy import hides a cycle; it does not remove it)."""
    assert import_cycles(import_graph()) == []


def test_import_cycle_check_finds_lazy_and_relative_cycles(tmp_path):
    pkg = tmp_path / "glip"
    (pkg / "hub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "hub" / "__init__.py").write_text("")
    (pkg / "hub" / "zoo.py").write_text("def f():\n    from glip.hub.checkpoint import load\n")
    (pkg / "hub" / "checkpoint.py").write_text("from .zoo import f\n")
    (pkg / "hub" / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from glip.hub import zoo\nimport glip.hub.zoo\n"
    )
    graph = import_graph(pkg)
    assert graph["glip.hub.checkpoint"] == {"glip.hub.zoo"} and graph["glip.hub.typed"] == {"glip.hub.zoo"}
    assert import_cycles(graph) == [["glip.hub.checkpoint", "glip.hub.zoo"]]


def test_import_glip_loads_neither_torchvision_nor_transformers():
    code = "import sys, glip; print(sorted(m for m in ('torchvision', 'transformers', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "failure",
    [
        "RuntimeError('operator torchvision::nms does not exist')",
        pytest.param("ImportError('no')", marks=pytest.mark.slow),  # the same path as above: ~8 s (pytest -m slow)
    ],
)
@pytest.mark.needs_fixtures
def test_full_forward_with_a_broken_torchvision(tmp_path, failure):
    fake = tmp_path / "fake" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise {failure}\n")
    script = textwrap.dedent(
        f"""
        import torch, glip
        from glip.ops.backend import torchvision_available
        from tests.conftest import OFFICIAL, load_case, tiny_text_encoder_dir
        from pathlib import Path
        assert not torchvision_available()
        model = glip.load_model(OFFICIAL / "tiny_glip_t" / "model_official.pth", OFFICIAL / "tiny_glip_t" / "config.yaml",
                                text_encoder=tiny_text_encoder_dir("tiny_glip_t", Path({str(tmp_path)!r})))
        c = load_case("tiny_glip_t", "astronaut")
        det = model.predict(c["image_original_rgb_uint8"].numpy(), c["caption"], threshold=0.0)
        ref = c["predictions"]["gpu_ml_nms_emulated"]["final_original_image_coords"]
        assert len(det) == ref["bbox"].shape[0], (len(det), ref["bbox"].shape)
        assert abs(float(det.scores.max()) - float(ref["fields"]["scores"].max())) < 1e-5
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), str(PACKAGE.parent)]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    assert OFFICIAL.is_dir()
