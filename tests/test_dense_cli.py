import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densekit.eval.cli import main
from densekit.eval.data import load_dataset, write_beir
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import BadIndexError, Index
from densekit.retriever.search import build_index, load_or_build_index

ROOT = Path(__file__).resolve().parents[1]


def synthetic_corpus(n):
    return {f"doc{i}": {"title": f"title {i}", "text": f"text of document {i} " + "filler words " * (i % 20)} for i in range(n)}


def test_eval_dense_builds_then_reuses_index(tiny_beir, tiny_bert, tmp_path, capsys):
    args = ["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", str(tiny_bert),
            "--index", str(tmp_path / "idx"), "--top-k", "5", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert Index.load(tmp_path / "idx").ntotal == 6
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["ndcg@10"] == second["ndcg@10"] and first["num_queries"] == 2


def test_index_from_another_corpus_is_refused(tiny_beir, tiny_bert, tmp_path):
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    build_index(synthetic_corpus(5), enc, tmp_path / "idx", show_progress=False)
    with pytest.raises(BadIndexError, match="another corpus"):
        load_or_build_index(load_dataset(tiny_beir).corpus, enc, tmp_path / "idx")


def test_build_resumes_from_shards(tiny_bert, tmp_path, monkeypatch):
    corpus = synthetic_corpus(25)
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    reference = build_index(corpus, enc, None, show_progress=False)
    calls = []
    original = DualEncoder.encode

    def flaky(self, texts, *args, **kwargs):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return original(self, texts, *args, **kwargs)

    monkeypatch.setattr(DualEncoder, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_index(corpus, enc, tmp_path / "idx", shard_size=10, show_progress=False)
    assert not (tmp_path / "idx").exists()
    calls.clear()
    index = build_index(corpus, enc, tmp_path / "idx", shard_size=10, show_progress=False)
    assert calls == [5]  # only the last shard was encoded again
    np.testing.assert_allclose(index.reconstruct(list(corpus)), reference.reconstruct(list(corpus)), atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_killed_index_build_leaves_no_loadable_folder(tiny_bert, tmp_path):
    data = write_beir(tmp_path / "data", synthetic_corpus(400), {"q": "x"}, {"test": {"q": {"doc1": 1}}})
    out = tmp_path / "idx"
    cmd = [sys.executable, "-m", "densekit.eval.cli", "index", "build", "--data", str(data), "--model", str(tiny_bert),
           "--out", str(out), "--shard-size", "50", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:
        seen += "encoding docs" in line
        if seen == 3:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert seen == 3, "the build finished before it could be killed"
    with pytest.raises(BadIndexError, match="no such index folder"):
        Index.load(out)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stderr.count("encoding docs") < 8  # resumed: fewer than all 8 shards encoded again
    assert Index.load(out).ntotal == 400


def test_search_cli(tiny_bert, tmp_path, capsys):
    corpus = synthetic_corpus(10)
    build_index(corpus, DualEncoder.from_pretrained(str(tiny_bert)), tmp_path / "idx", show_progress=False)
    assert main(["search", "--index", str(tmp_path / "idx"), "--query", "document 3", "--k", "3", "--json"]) == 0
    (out,) = json.loads(capsys.readouterr().out)  # always a list, one object per --query
    assert out["query"] == "document 3" and len(out["hits"]) == 3 and all(h["id"] in corpus for h in out["hits"])
    assert main(["search", "--index", str(tmp_path / "nope"), "--query", "x"]) == 2
    assert "no such index folder" in capsys.readouterr().err


def test_eval_compares_models_and_draws_roc(tiny_beir, tiny_bert, tiny_llama, tmp_path, capsys):
    assert main(["eval", "--data", str(tiny_beir), "--retriever", "dense", "--model", str(tiny_bert), str(tiny_llama),
                 "--top-k", "5", "--json", "--roc", str(tmp_path / "roc.png")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == [str(tiny_bert), str(tiny_llama)]
    assert all(0 <= r["auc@5"] <= 1 for r in rows)
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
