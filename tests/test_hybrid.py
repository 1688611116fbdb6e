"""Hybrid first stage (BM25 + dense fused per query): the fusion against hand computations, the CLI against the
two retrievers run by hand, and the tuned weight against a grid search on the tuning split only."""
import json
import statistics

import pytest

from densekit.eval.cli import main
from densekit.retriever.hybrid import RRF_K, fuse_runs

LEXICAL = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
DENSE = {"q": {"b": 0.9, "d": 0.5}}


def z(values):
    mean, std = statistics.fmean(values), statistics.pstdev(values)
    return [(v - mean) / std for v in values]


def test_z_fusion_by_hand_missing_documents_get_the_lists_minimum():
    za, zb = z([3.0, 2.0, 1.0]), z([0.9, 0.5])
    lex = dict(zip("abc", za))
    den = dict(zip("bd", zb))
    for w in (0.0, 0.3, 1.0):
        expected = {d: (1 - w) * lex.get(d, min(za)) + w * den.get(d, min(zb)) for d in "abcd"}
        fused = fuse_runs(LEXICAL, DENSE, w, "z")["q"]
        assert fused == pytest.approx(expected)
    assert list(fuse_runs(LEXICAL, DENSE, 0.0, "z", k=2)["q"]) == ["a", "b"]  # w = 0: BM25's order, cut at k


def test_minmax_and_rrf_by_hand():
    fused = fuse_runs(LEXICAL, DENSE, 0.5, "minmax")["q"]
    assert fused == pytest.approx({"a": 0.5 * 1.0 + 0.5 * 0.0, "b": 0.5 * 0.5 + 0.5 * 1.0, "c": 0.0, "d": 0.5 * 0.0})
    rrf = fuse_runs(LEXICAL, DENSE, None, "rrf")["q"]
    assert rrf == pytest.approx({"a": 1 / (RRF_K + 1), "b": 1 / (RRF_K + 2) + 1 / (RRF_K + 1), "c": 1 / (RRF_K + 3),
                                 "d": 1 / (RRF_K + 2)})


@pytest.mark.parametrize("weight, norm, message", [(1.5, "z", r"\[0, 1\]"), (None, "z", r"\[0, 1\]"),
                                                   (0.5, "rrf", "no weight"), (0.5, "l2", "unknown hybrid")])
def test_bad_weights_and_norms_are_refused(weight, norm, message):
    with pytest.raises(ValueError, match=message):
        fuse_runs(LEXICAL, DENSE, weight, norm)


def _eval(argv, capsys):
    code = main(argv + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def test_cli_hybrid_is_the_two_retrievers_fused(tiny_beir, tiny_bert, tmp_path, capsys):
    from densekit.eval.data import load_dataset
    from densekit.eval.metrics import evaluate
    from densekit.eval.runfile import read_run
    from densekit.retriever.bm25 import bm25_search
    from densekit.retriever.search import dense_search

    base = ["eval", "--data", str(tiny_beir), "--retriever", "hybrid", "--model", str(tiny_bert), "--top-k", "4"]
    row, _ = _eval(base + ["--hybrid-weight", "0.3", "--save-run", str(tmp_path / "h.trec")], capsys)
    ds = load_dataset(tiny_beir, "test")
    expected = fuse_runs(bm25_search(ds.corpus, ds.queries, 4), dense_search(ds.corpus, ds.queries, 4, model=str(tiny_bert)),
                         0.3, "z", 4)
    saved = read_run(tmp_path / "h.trec")
    assert {q: sorted(d, key=d.get, reverse=True) for q, d in saved.items()} == \
        {q: sorted(d, key=d.get, reverse=True) for q, d in expected.items() if d}
    assert row["ndcg@10"] == pytest.approx(evaluate(expected, ds.qrels, ["ndcg@10"])[1]["ndcg@10"])
    assert row["retriever"] == "hybrid" and row["hybrid"] == {"weight": 0.3, "norm": "z", "tuned_on": None,
                                                               "tune_queries": None, "curve": None}


def test_cli_hybrid_auto_weight_is_chosen_on_the_tuning_split_only(tiny_beir, tiny_bert, capsys, monkeypatch):
    from densekit.eval import data
    from densekit.eval.fusion import choose_weight
    from densekit.retriever.hybrid import hybrid_parts

    read = []
    real = data.load_qrels
    monkeypatch.setattr(data, "load_qrels", lambda path: read.append(str(path)) or real(path))
    row, err = _eval(["eval", "--data", str(tiny_beir), "--retriever", "hybrid", "--model", str(tiny_bert),
                      "--top-k", "4", "--hybrid-weight", "auto"], capsys)
    assert row["hybrid"]["tuned_on"] == "train" and row["hybrid"]["tune_queries"] == 1
    assert "--hybrid-weight auto: W=" in err and "split 'train'" in err
    train = data.load_dataset(tiny_beir, "train")
    lexical, dense = hybrid_parts(train.corpus, train.queries, 4, str(tiny_bert))
    weight, _ = choose_weight(lambda w: fuse_runs(lexical, dense, w, "z", 4), train.qrels)
    assert row["hybrid"]["weight"] == weight
    # the tuning reads train qrels; the test qrels are read to check the split and to score, never to tune
    assert any(p.endswith("train.tsv") for p in read)


@pytest.mark.parametrize("extra, message", [
    (["--retriever", "bm25", "--hybrid-weight", "0.5"], "--hybrid-weight is ignored with --retriever bm25"),
    (["--retriever", "hybrid", "--hybrid-norm", "rrf", "--hybrid-weight", "0.5"], "rrf (reciprocal-rank fusion) has no weight"),
    (["--retriever", "hybrid", "--hybrid-weight", "auto", "--tune-split", "test"], "is the evaluated split"),
])
def test_cli_hybrid_bad_flags(tiny_beir, capsys, extra, message):
    try:
        code = main(["eval", "--data", str(tiny_beir)] + extra)
    except SystemExit as stop:
        code = stop.code
    assert code == 2 and message in capsys.readouterr().err


def test_mine_hybrid_takes_negatives_from_the_fused_run(tiny_beir, tiny_bert, tmp_path, capsys):
    from densekit.eval.data import load_dataset
    from densekit.retriever.bm25 import bm25_search
    from densekit.retriever.mining import select_negatives
    from densekit.retriever.search import dense_search

    index, out = tmp_path / "idx", tmp_path / "neg.jsonl"
    assert main(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(index)]) == 0
    assert main(["mine", "--data", str(tiny_beir), "--split", "test", "--index", str(index), "--retriever", "hybrid",
                 "--hybrid-weight", "0.7", "--rank-from", "0", "--rank-to", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    ds = load_dataset(tiny_beir, "test")
    judged = {q: t for q, t in ds.queries.items() if q in ds.qrels}
    fused = fuse_runs(bm25_search(ds.corpus, judged, 4), dense_search(ds.corpus, judged, 4, model=str(tiny_bert)), 0.7,
                      "z", 4)
    expected = select_negatives(fused, ds.qrels, 0, 4, 20)
    mined = {json.loads(line)["query_id"]: json.loads(line)["negatives"] for line in out.read_text().splitlines()}
    assert mined == expected and any(mined.values())
    for extra, message in ((["--retriever", "hybrid"], "add --index"),
                           (["--index", str(index), "--retriever", "hybrid", "--max-ratio", "0.9"], "--max-ratio is ignored"),
                           (["--index", str(index), "--hybrid-weight", "0.5"], "--hybrid-weight is ignored")):
        try:
            code = main(["mine", "--data", str(tiny_beir), "--split", "test", "--out", str(tmp_path / "x.jsonl"), *extra])
        except SystemExit as stop:
            code = stop.code
        assert code == 2 and message in capsys.readouterr().err


def test_fuse_auto_tunes_over_the_evaluated_hybrid_first_stage(tiny_beir, tiny_bert, capsys, monkeypatch):
    """--fuse auto on a hybrid first stage: the tuning split's first stage is the same hybrid (weight, norm, depth),
    not a default one."""
    from densekit.reranker import kinds
    from densekit.retriever import first_stage as stage

    class Stub:
        kind, modes = "stub", ("score",)

        @classmethod
        def from_pretrained(cls, target):
            return cls()

        def rerank(self, run, corpus, queries, top_k=20, batch_size=8, show_progress=True, mode=None):
            return {q: {d: -float(i) for i, d in enumerate(sorted(docs))} for q, docs in run.items()}

    monkeypatch.setitem(kinds.KINDS, "stub", kinds.Kind("stub", cls=Stub))
    calls, real = [], stage.first_stage
    monkeypatch.setattr(stage, "first_stage", lambda *a, **k: calls.append((a[0], a[3], k)) or real(*a, **k))
    row, _ = _eval(["eval", "--data", str(tiny_beir), "--retriever", "hybrid", "--model", str(tiny_bert), "--top-k", "5",
                    "--hybrid-weight", "0.3", "--hybrid-norm", "minmax", "--reranker", "stub:x", "--rerank-top-k", "3",
                    "--fuse", "auto"], capsys)
    assert row["fuse"]["tuned_on"] == "train"
    (retriever, k, kwargs), = calls  # the evaluated split's hybrid ran through hybrid_parts, the tuning one here
    assert (retriever, k, kwargs["hybrid_weight"], kwargs["hybrid_norm"]) == ("hybrid", 5, 0.3, "minmax")
