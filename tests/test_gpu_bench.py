"""bench/gpu.py, the one-shot GPU run, proven on CPU before any device time is spent: its --smoke mode (the same
checks on tiny configurations of the same model families) runs to the end with every import the GPU machine lacks
blocked (bench/gpu.sh carries the rest as wheels), every correctness row passes, every speed row is filled, and its
BlockRank rows draw the latency-vs-N plot. Guards: a start-up import of faiss/beir/bm25s/gguf/PyStemmer/pytrec_eval
on the path the script runs (it would fail on the device), a check that crashes (it would cost the run's other
results: the script records the error and goes on, which this test turns into a failure)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_DEVICE = ("faiss", "beir", "bm25s", "gguf", "Stemmer", "pytrec_eval")
RUNNER = (f"import sys, runpy\nfor m in {ABSENT_ON_DEVICE!r}: sys.modules[m] = None\n"
          "sys.argv = ['bench/gpu.py', *sys.argv[1:]]\nrunpy.run_path('bench/gpu.py', run_name='__main__')\n")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    errors = [r for r in rows if "error" in r]
    assert proc.returncode == 0 and not errors, (errors or proc.stderr[-3000:])
    return rows


def script_checks() -> list[str]:
    from importlib import util

    spec = util.spec_from_file_location("densekit_gpu_bench", ROOT / "bench" / "gpu.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.CHECKS)


def test_every_check_runs_and_every_correctness_row_passes(smoke):
    assert {r["check"] for r in smoke} >= set(script_checks())
    judged = [r for r in smoke if "pass" in r]
    assert {r["check"] for r in judged} == {"blockrank_reference", "encoder_device", "retriever_bf16_step", "reranker_bf16_step"}
    assert all(r["pass"] for r in judged), [r for r in judged if not r["pass"]]
    ref = {(r["model"], r["dtype"]) for r in smoke if r["check"] == "blockrank_reference"}
    assert ref == {(m, d) for m in ("smollm2-135m", "gemma3-270m", "mistral-7b") for d in ("float32", "bfloat16")}
    assert {r["kind"] for r in smoke if r["check"] == "reranker_bf16_step"} == {"pointwise", "blockrank"}


def test_speed_rows_are_filled_and_compare_against_the_peer(smoke):
    encode = next(r for r in smoke if r["check"] == "encode_speed")
    train = next(r for r in smoke if r["check"] == "train_speed")
    for row, ours, peer in ((encode, "densekit_docs_per_s", "st_docs_per_s"),
                            (train, "densekit_samples_per_s", "st_mnrl_samples_per_s")):
        assert row[ours] > 0 and row[peer] > 0
        assert row["ratio"] == pytest.approx(row[ours] / row[peer], rel=0.05)
    assert encode["min_cosine_vs_st"] > 0.999  # the same model: the peer embeds the same vectors
    rerank = {(r["model"], r["kind"]) for r in smoke if r["check"] == "rerank_speed" and r["docs_per_s"] > 0}
    assert rerank == {(m, k) for m in ("smollm2-135m", "gemma3-270m") for k in ("qlm", "pointwise")}
    scaling = [r for r in smoke if r["check"] == "blockrank_scaling"]
    assert {(r["model"].split()[0], r["n"]) for r in scaling} == {(m, n) for m in ("mistral-7b", "smollm2-135m") for n in (2, 4, 8)}
    assert all(r["blockrank_s"] > 0 and r["full_s"] > 0 and r["full_all_s"] > 0 for r in scaling)


def test_the_blockrank_rows_draw_the_plot(smoke, tmp_path):
    saved = tmp_path / "gpu.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in smoke))
    png = tmp_path / "scaling.png"
    subprocess.run([sys.executable, "bench/blockrank_scaling.py", "--plot-only", str(saved), "--out", str(png)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_device_wrapper_refuses_a_missing_command():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "usage" in proc.stderr
