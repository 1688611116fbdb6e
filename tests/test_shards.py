"""Sharded corpus encoding, the index merged from shards, and corpora opened through `datasets` (issue 13)."""
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from densekit.eval.cli import main
from densekit.eval.data import load_corpus_arrow, load_dataset, write_beir
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import BadIndexError, Index, corpus_fingerprint
from densekit.retriever.search import build_index, dense_search
from densekit.retriever.shards import encode_shard, merge_shards, shard_range

ROOT = Path(__file__).resolve().parents[1]


def synthetic_corpus(n: int) -> dict:
    return {f"doc{i}": {"title": f"title {i}", "text": f"text of document {i} " + "filler words " * (i % 20)} for i in range(n)}


class VectorEncoder:
    """Stands in for DualEncoder in encode_shard: text ``v<i>`` -> row i of a fixed matrix."""

    def __init__(self, vectors: np.ndarray):
        self.vectors, self.dim = vectors, vectors.shape[1]

    def encode(self, texts, batch_size=64, show_progress=False, out=None):
        x = self.vectors[[int(t[1:]) for t in texts]]
        np.save(out, x)
        return x


def vector_corpus(n: int) -> dict:
    return {f"d{i}": {"title": "", "text": f"v{i}"} for i in range(n)}


def meta_of(corpus, model_hash="m1") -> dict:
    return {"model": "synthetic", "model_hash": model_hash, "corpus_fingerprint": corpus_fingerprint(corpus), "num_docs": len(corpus)}


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((50, dim))
    x = centers[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def test_shard_range_matches_datasets_split():
    import datasets

    ds = datasets.Dataset.from_dict({"x": list(range(23))})
    for n in (1, 2, 3, 5, 23):
        assert [shard_range(23, n, i) for i in range(n)] == [
            (s["x"][0], s["x"][-1] + 1) for s in (ds.shard(n, i, contiguous=True) for i in range(n))]


def test_two_process_sharded_build_equals_one_process(tiny_bert, tmp_path, capsys):
    corpus = synthetic_corpus(25)
    data = write_beir(tmp_path / "data", corpus, {"q": "x"}, {"test": {"q": {"doc1": 1}}})
    common = ["index", "build", "--data", str(data), "--model", str(tiny_bert), "--shard-size", "5", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "densekit.eval.cli", *common, "--out", str(tmp_path / "sharded"),
                               "--num-shards", "2", "--shard-index", str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert [json.loads(o[0])["shard_index"] for o in outs] == [0, 1]
    assert not (tmp_path / "sharded").exists()  # encoding only: the index comes from the merge
    assert main(["index", "merge", "--out", str(tmp_path / "sharded")]) == 0
    assert not (tmp_path / "sharded.partial").exists()  # the default work folder goes after a merge
    assert main(common + ["--out", str(tmp_path / "one")]) == 0
    got, want = Index.load(tmp_path / "sharded"), Index.load(tmp_path / "one")
    assert got.ids == want.ids == list(corpus)
    assert got.meta == want.meta  # same model hash, corpus fingerprint, pooling ...
    np.testing.assert_allclose(got.reconstruct(got.ids), want.reconstruct(want.ids), atol=1e-6)
    queries = DualEncoder.from_pretrained(str(tiny_bert)).encode(["document 3", "filler", "title 7"], is_query=True)
    (got_ids, got_scores), (want_ids, want_scores) = got.search(queries, 10), want.search(queries, 10)
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)


def test_launcher_ranks_shard_and_rank0_merges(tiny_bert, tmp_path, monkeypatch, capsys):
    """Under torchrun/accelerate ($WORLD_SIZE, $RANK) each rank encodes its shard and rank 0 merges."""
    data = write_beir(tmp_path / "data", synthetic_corpus(11), {"q": "x"}, {"test": {"q": {"doc1": 1}}})
    argv = ["index", "build", "--data", str(data), "--model", str(tiny_bert), "--out", str(tmp_path / "idx"), "--shard-size", "4",
            "--arrow"]  # the corpus through `datasets`, cached under $DENSEKIT_CACHE/datasets
    monkeypatch.setenv("DENSEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["shard"].endswith("shard-00001-of-00002") and json.loads(lines[1])["ntotal"] == 11
    assert Index.load(tmp_path / "idx").ids == list(synthetic_corpus(11))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "data", "idx"]
    assert any((tmp_path / "cache" / "datasets").rglob("*.arrow"))


@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x4"])
def test_ivf_merge_keeps_recall_of_one_piece_build(tmp_path, factory):
    x, queries = clustered(4000, 32, 0), clustered(200, 32, 1)
    corpus, encoder = vector_corpus(len(x)), VectorEncoder(x)
    for i in range(3):
        encode_shard(corpus, encoder, tmp_path / "work", meta_of(corpus), 3, i, shard_size=500, show_progress=False)
    merged = merge_shards([tmp_path / "work"], tmp_path / "idx", factory, show_progress=False)
    whole = Index.build(x, list(corpus), factory)
    exact = Index.build(x, list(corpus), "Flat").search(queries, 10)[0]
    recall = {}
    for name, index in (("merged", Index.load(tmp_path / "idx")), ("whole", whole)):
        index.set_params(nprobe=4)
        found = index.search(queries, 10)[0]
        recall[name] = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall["whole"] > 0.15 and abs(recall["merged"] - recall["whole"]) <= 0.01, recall
    assert merged.ids == list(corpus)
    # --train-sample smaller than the corpus: rows drawn (seeded) from every shard, as Index.train samples one piece
    sampled = merge_shards([tmp_path / "work"], tmp_path / "idx2", factory, train_sample=2000, show_progress=False)
    whole = Index(dim=32, factory=factory)
    whole.train(x, max_samples=2000, seed=0)
    whole.add(x, list(corpus))
    for name, index in (("merged", sampled), ("whole", whole)):
        index.set_params(nprobe=4)
        found = index.search(queries, 10)[0]
        recall[name] = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall["whole"] > 0.15 and abs(recall["merged"] - recall["whole"]) <= 0.01, recall


def test_flat_merge_equals_one_piece_build_exactly(tmp_path):
    x = clustered(1000, 16, 2)
    corpus = vector_corpus(len(x))
    for i in range(2):
        encode_shard(corpus, VectorEncoder(x), tmp_path / "w", meta_of(corpus), 2, i, shard_size=128, show_progress=False)
    merged = merge_shards([tmp_path / "w"], tmp_path / "idx", add_batch=100, show_progress=False)
    assert merged.ids == list(corpus)
    np.testing.assert_array_equal(Index.load(tmp_path / "idx").reconstruct(merged.ids), x)


# ---------------------------------------------------------------- bad input
def _two_shards(tmp_path, x=None, meta=None, num_shards=2, indices=(0, 1)):
    x = clustered(40, 8, 3) if x is None else x
    corpus = vector_corpus(len(x))
    for i in indices:
        encode_shard(corpus, VectorEncoder(x), tmp_path / "w", meta or meta_of(corpus), num_shards, i, shard_size=7,
                     show_progress=False)
    return corpus, x


def test_missing_and_duplicated_shards_are_named(tmp_path):
    _two_shards(tmp_path, indices=(0,))
    with pytest.raises(BadIndexError, match=r"shard\(s\) 1 of 2 missing \(shard-00001-of-00002"):
        merge_shards([tmp_path / "w"], tmp_path / "idx")
    _two_shards(tmp_path, indices=(1,))
    shutil.copytree(tmp_path / "w" / "shard-00000-of-00002", tmp_path / "copy" / "shard-00000-of-00002")
    with pytest.raises(BadIndexError, match=r"shard 0 of 2 given twice: .*w/shard-00000-of-00002 and .*copy/shard-00000-of-00002"):
        merge_shards([tmp_path / "w", tmp_path / "copy"], tmp_path / "idx")
    assert main(["index", "merge", "--out", str(tmp_path / "idx"), "--shards", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "idx").exists()


def test_incomplete_shard_is_refused_and_resumes(tmp_path):
    x = clustered(40, 8, 3)
    corpus, calls, dies = vector_corpus(40), [], [True]

    class Dying(VectorEncoder):
        def encode(self, texts, **kwargs):
            calls.append(len(texts))
            if len(calls) == 2 and dies[0]:
                raise KeyboardInterrupt("killed")
            return super().encode(texts, **kwargs)

    _two_shards(tmp_path, x, indices=(0,))
    with pytest.raises(KeyboardInterrupt):
        encode_shard(corpus, Dying(x), tmp_path / "w", meta_of(corpus), 2, 1, shard_size=7, show_progress=False)
    with pytest.raises(BadIndexError, match=r"shard-00001-of-00002\.partial: shard 1 of 2 is incomplete"):
        merge_shards([tmp_path / "w"], tmp_path / "idx")
    calls.clear()
    dies[0] = False
    encode_shard(corpus, Dying(x), tmp_path / "w", meta_of(corpus), 2, 1, shard_size=7, show_progress=False)
    assert calls == [7, 6]  # resumed: the first piece (7 docs) of shard 1's 20 was kept
    np.testing.assert_array_equal(merge_shards([tmp_path / "w"], tmp_path / "idx", show_progress=False).reconstruct(list(corpus)), x)


def test_shards_of_other_models_dims_and_corpora_are_refused(tmp_path):
    corpus, x = _two_shards(tmp_path, indices=(0,))
    other = tmp_path / "other"
    for label, make, message in (
            ("model", lambda: _two_shards(other, x, meta=meta_of(corpus, "m2"), indices=(1,)), "different encoder"),
            ("dim", lambda: _two_shards(other, np.hstack([x, x]), indices=(1,)), "disagree on the dimension"),
            ("corpus", lambda: _two_shards(other, x[:30], indices=(1,)), "disagree on the corpus size")):
        shutil.rmtree(other, ignore_errors=True)
        make()
        with pytest.raises(BadIndexError, match=message):
            merge_shards([tmp_path / "w" / "shard-00000-of-00002", other / "w" / "shard-00001-of-00002"], tmp_path / "idx")
    (other / "w" / "shard-00001-of-00002" / "shard.json").write_text("{")
    with pytest.raises(BadIndexError, match="not a complete densekit index shard"):
        merge_shards([tmp_path / "w" / "shard-00000-of-00002", other / "w" / "shard-00001-of-00002"], tmp_path / "idx")


def test_resume_with_another_shard_count_is_refused(tmp_path, tiny_beir, tiny_bert, capsys):
    _two_shards(tmp_path, indices=(0,))
    with pytest.raises(BadIndexError, match=r"holds shards of a 2-way split, not 3; resume with --num-shards 2"):
        _two_shards(tmp_path, num_shards=3, indices=(0,))
    # through the CLI too, and a mismatched pair of flags is refused before any work
    out = tmp_path / "idx"
    base = ["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(out)]
    assert main(base + ["--num-shards", "2", "--shard-index", "0"]) == 0
    assert main(base + ["--num-shards", "3", "--shard-index", "1"]) == 2
    assert "holds shards of a 2-way split" in capsys.readouterr().err
    for bad, message in ((["--shard-index", "0"], "go together"), (["--num-shards", "2", "--shard-index", "2"], "must be below")):
        with pytest.raises(SystemExit):
            main(base + bad)
        assert message in capsys.readouterr().err


def test_interrupted_merge_leaves_nothing_that_loads(tmp_path, monkeypatch):
    corpus, x = _two_shards(tmp_path)
    original, added = Index.add, []

    def dying(self, vectors, ids, **kwargs):
        added.append(len(ids))
        if len(added) == 3:
            raise KeyboardInterrupt("killed mid-merge")
        return original(self, vectors, ids, **kwargs)

    monkeypatch.setattr(Index, "add", dying)
    with pytest.raises(KeyboardInterrupt):
        merge_shards([tmp_path / "w"], tmp_path / "idx", show_progress=False)
    with pytest.raises(BadIndexError, match="no such index folder"):
        Index.load(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]
    monkeypatch.setattr(Index, "add", original)
    assert merge_shards([tmp_path / "w"], tmp_path / "idx", show_progress=False).ntotal == 40  # shards intact: merge again


# ---------------------------------------------------------------- corpora through `datasets`
def test_arrow_corpus_gives_the_same_index_and_run(tiny_beir, tiny_bert, tmp_path):
    ds = load_dataset(tiny_beir)
    arrow = load_corpus_arrow(tiny_beir, cache_dir=tmp_path / "cache")
    assert arrow.column_names == ["_id", "title", "text"] and len(arrow) == len(ds.corpus)
    assert corpus_fingerprint(arrow) == corpus_fingerprint(ds.corpus)
    with gzip.open(tmp_path / "corpus.jsonl.gz", "wb") as fh:  # a gzipped corpus opens the same
        fh.write((tiny_beir / "corpus.jsonl").read_bytes())
    gz = tmp_path / "gz"
    gz.mkdir()
    shutil.move(tmp_path / "corpus.jsonl.gz", gz / "corpus.jsonl.gz")
    assert corpus_fingerprint(load_corpus_arrow(gz, cache_dir=tmp_path / "cache")) == corpus_fingerprint(ds.corpus)
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    want = dense_search(ds.corpus, ds.queries, 5, encoder=enc, show_progress=False)
    assert dense_search(arrow, ds.queries, 5, encoder=enc, show_progress=False) == want
    for i in range(2):  # a sharded build over the Arrow corpus (Dataset.shard) ...
        build_index(arrow, enc, tmp_path / "idx", shard_size=2, num_shards=2, shard_index=i, merge=i == 1, show_progress=False)
    index = Index.load(tmp_path / "idx")  # ... equals the dict path's index and run
    reference = build_index(ds.corpus, enc, None, show_progress=False)
    assert index.ids == reference.ids and index.meta == reference.meta
    np.testing.assert_allclose(index.reconstruct(index.ids), reference.reconstruct(reference.ids), atol=1e-6)
    assert dense_search(arrow, ds.queries, 5, encoder=enc, index_dir=tmp_path / "idx", show_progress=False).keys() == want.keys()


def test_arrow_corpus_errors_name_the_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(Exception, match=r"corpus\.jsonl:2: duplicate id 'a'"):
        load_corpus_arrow(folder, cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_arrow_corpus_same_run_on_scifact(beir_data, tiny_bert, tmp_path):
    if not (beir_data / "scifact").is_dir():
        pytest.skip("scifact not in $DENSEKIT_DATA")
    ds = load_dataset(beir_data / "scifact")
    arrow = load_corpus_arrow(beir_data / "scifact", cache_dir=tmp_path / "cache")
    assert corpus_fingerprint(arrow) == corpus_fingerprint(ds.corpus)
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    queries = dict(list(ds.queries.items())[:50])
    want = dense_search(ds.corpus, queries, 10, encoder=enc, show_progress=False)
    got = dense_search(arrow, queries, 10, encoder=enc, show_progress=False)
    assert {q: list(r) for q, r in got.items()} == {q: list(r) for q, r in want.items()}
    for q in want:
        np.testing.assert_allclose(list(got[q].values()), list(want[q].values()), atol=1e-6)


def test_on_disk_ivf_merge_searches_like_in_memory_and_survives_a_move(tmp_path):
    x, queries = clustered(3000, 16, 4), clustered(50, 16, 5)
    corpus = vector_corpus(len(x))
    for i in range(3):
        encode_shard(corpus, VectorEncoder(x), tmp_path / "w", meta_of(corpus), 3, i, shard_size=400, show_progress=False)
    memory = merge_shards([tmp_path / "w"], tmp_path / "mem", "IVF16,Flat", show_progress=False)
    disk = merge_shards([tmp_path / "w"], tmp_path / "a" / "disk", "IVF16,Flat", show_progress=False, on_disk=True)
    assert sorted(p.name for p in (tmp_path / "a" / "disk").iterdir()) == [
        "densekit.json", "ids.npy", "index.faiss", "lists.ivfdata", "meta.json"]
    os.rename(tmp_path / "a", tmp_path / "b")  # the folder moves: lists.ivfdata is found beside index.faiss
    moved = Index.load(tmp_path / "b" / "disk")
    for index in (memory, disk, moved):
        index.set_params(nprobe=3)
    want = memory.search(queries, 10)
    for got in (disk.search(queries, 10), moved.search(queries, 10)):
        assert got[0] == want[0]
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert moved.ids == list(corpus) and moved.meta["on_disk"] is True
    with pytest.raises(BadIndexError, match="--on-disk keeps IVF lists on disk"):
        merge_shards([tmp_path / "w"], tmp_path / "flat", "Flat", on_disk=True)
    assert merge_shards([tmp_path / "w"], tmp_path / "b" / "disk", "IVF16,Flat", overwrite=True, on_disk=True,
                        show_progress=False).ntotal == 3000


def test_bm25_first_stage_and_mining_read_arrow_corpora(tiny_beir, tiny_bert, tmp_path):
    """BM25 (tokenised in slices), the first stage and hard-negative mining give the dict path's results on an
    Arrow corpus; the dense mining reuses an index built from the Arrow corpus (same fingerprint)."""
    from densekit.retriever.bm25 import BM25Index
    from densekit.retriever.mining import MineConfig, mine_negatives
    from densekit.retriever.first_stage import first_stage

    ds = load_dataset(tiny_beir)
    arrow = load_corpus_arrow(tiny_beir, cache_dir=tmp_path / "cache")
    want = BM25Index.build(ds.corpus).search(ds.queries, 4)
    assert BM25Index.build(arrow, batch_size=2).search(ds.queries, 4) == want
    assert first_stage("bm25", arrow, ds.queries, 4) == want
    config = MineConfig(rank_from=0, rank_to=4, max_negatives=3)
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}  # one positive each: BM25's other hits become negatives
    mined = mine_negatives(arrow, ds.queries, qrels, config)
    assert mined == mine_negatives(ds.corpus, ds.queries, qrels, config) == {"q1": ["d6"], "q2": ["d5"]}
    build_index(arrow, DualEncoder.from_pretrained(str(tiny_bert)), tmp_path / "idx", show_progress=False)
    dense = MineConfig(rank_from=0, rank_to=4, max_negatives=3, max_ratio=0.99)
    mined = mine_negatives(arrow, ds.queries, ds.qrels, dense, index_dir=tmp_path / "idx")
    assert mined == mine_negatives(ds.corpus, ds.queries, ds.qrels, dense, index_dir=tmp_path / "idx") and any(mined.values())
