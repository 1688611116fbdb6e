"""The folders retriever/, reranker/ and eval/ install as densekit.retriever, densekit.reranker and densekit.eval:
nothing named ``eval``, ``retriever`` or ``reranker`` is importable from outside the checkout."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_installed_under_the_densekit_namespace_only(tmp_path):
    ok = run_python("import densekit.retriever, densekit.reranker, densekit.eval, densekit.eval.cli; "
                    "print(densekit.eval.cli.__file__)", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()).resolve() == (ROOT / "eval" / "cli.py").resolve()
    for name in ("eval", "retriever", "reranker"):
        bare = run_python(f"import {name}", tmp_path)
        assert bare.returncode != 0 and "ModuleNotFoundError" in bare.stderr, name


def test_the_front_door_imports_lazily_from_outside_the_checkout(tmp_path):
    """Guards ``import densekit`` failing (a namespace package with no attributes) or importing torch at once (every
    ``densekit --help`` would pay for it): the user's objects are there, and torch loads only when one is used."""
    code = ("import sys, densekit; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
            "print(densekit.DualEncoder.__module__, densekit.Index.__module__, densekit.load_dataset.__module__); "
            "assert set(densekit.__all__) <= set(dir(densekit))")
    ok = run_python(code, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["densekit.retriever.encoder", "densekit.retriever.index", "densekit.eval.data"]
    missing = run_python("import densekit; densekit.nothing_here", tmp_path)
    assert missing.returncode != 0 and "has no attribute 'nothing_here'" in missing.stderr


@pytest.mark.slow
def test_the_wheel_holds_only_the_densekit_package(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "indexes", "out",
                                                                "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel, = tmp_path.glob("densekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"densekit", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for module in ("densekit/__init__.py", "densekit/eval/cli.py", "densekit/retriever/index.py", "densekit/reranker/qlm.py"):
        assert module in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "densekit = densekit.eval.cli:main" in entry
