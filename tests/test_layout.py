"""The source tree's rooms and the direction of their imports (read statically with ``ast``, every import counted,
those inside functions too): ``eval -> reranker -> retriever -> core``, and no import circle between modules.

Fails on: a core module reaching up into a layer (e.g. core/engine.py importing densekit.retriever.config), the
reranker importing a retriever module for anything but retrieval (e.g. its writes through densekit.retriever.io,
which is how the tree stood before core/), a lower layer importing eval, or two modules importing each other
(eval/fusion.py <-> eval/pipeline.py once did).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "retriever", "reranker", "eval"]  # each may import the ones before it, and itself
# What a reranker may take from the retriever: first stages, nothing else (training, io, configs live in core).
RETRIEVAL = {"densekit.retriever.search", "densekit.retriever.bm25", "densekit.retriever.hybrid",
             "densekit.retriever.index", "densekit.retriever.encoder"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("densekit",) + parts)


def imports(path: Path) -> set[str]:
    """Every densekit module ``path`` imports (absolute or relative; ``from pkg import mod`` counts as ``pkg.mod``)."""
    package = module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("densekit.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("densekit."):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if (ROOT / Path(*sub.split(".")[1:])).with_suffix(".py").exists() else base)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for layer in LAYERS for p in sorted((ROOT / layer).glob("*.py"))}


def test_the_rooms_exist_and_each_module_is_found():
    g = graph()
    assert {"densekit.core.engine", "densekit.core.io", "densekit.retriever.train", "densekit.reranker.train",
            "densekit.eval.cli"} <= set(g)
    assert all(t in g or t.rsplit(".", 1)[-1] == "__init__" for deps in g.values() for t in deps), \
        [t for deps in g.values() for t in deps if t not in g]


def test_imports_point_down_the_layers():
    bad = []
    for mod, deps in graph().items():
        layer = LAYERS.index(mod.split(".")[1])
        for dep in deps:
            if LAYERS.index(dep.split(".")[1]) > layer:
                bad.append(f"{mod} -> {dep}")
            elif mod.split(".")[1] == "reranker" and dep.split(".")[1] == "retriever" and dep not in RETRIEVAL:
                bad.append(f"{mod} -> {dep} (not retrieval)")
    assert not bad, bad


def test_no_import_circles():
    g = graph()
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
