import json

import pytest
import pytrec_eval

from densekit.eval import metrics as M
from densekit.eval.cli import main
from densekit.eval.data import DataError, load_dataset
from densekit.retriever.bm25 import BM25Index, bm25_search
from densekit.eval.metrics import drop_identical_ids, evaluate
from densekit.eval.report import format_table
from densekit.eval.runfile import read_run, write_run


def test_run_file_roundtrip(tmp_path):
    run = {"q2": {"d1": 0.5, "d2": 1.25}, "q1": {"d3": -2.0}}
    path = tmp_path / "run.trec"
    write_run(path, run, tag="x")
    lines = path.read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 -2.0 x" and lines[1] == "q2 Q0 d2 1 1.25 x"
    assert read_run(path) == run


def test_malformed_run_file(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 abc t\n")
    with pytest.raises(DataError, match=r"run\.trec:2: score 'abc'"):
        read_run(path)
    path.write_text("q1 d1 0.5\n")
    with pytest.raises(DataError, match=r"run\.trec:1: expected 6 columns"):
        read_run(path)


def test_identical_ids_dropped_by_default():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 1.0}}
    assert drop_identical_ids(run) == {"q1": {"d1": 1.0}}
    assert evaluate(run, qrels, ["mrr@10"])[1]["mrr@10"] == 1.0
    assert evaluate(run, qrels, ["mrr@10"], ignore_identical_ids=False)[1]["mrr@10"] == 0.5


def test_bm25_on_tiny_corpus(tiny_beir):
    ds = load_dataset(tiny_beir)
    run = bm25_search(ds.corpus, ds.queries, k=3)
    assert M.rank(run["q1"])[0] == "d1"  # "cats purr"
    assert M.rank(run["q2"])[0] in {"d3", "d5"}
    assert all(len(docs) <= 3 for docs in run.values())
    # a query sharing no term with the corpus retrieves nothing rather than crashing
    assert BM25Index.build(ds.corpus).search({"z": "xylophone"}) == {"z": {}}
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Index.build({})


def test_cli_eval_json(tiny_beir, capsys):
    """The printed figures are pytrec_eval's for BM25's run of the judged test queries (fails on any metric or
    query-selection bug that still leaves a number in (0, 1], which the old bounds check accepted)."""
    assert main(["eval", "--data", str(tiny_beir), "--retriever", "bm25", "--top-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ds = load_dataset(tiny_beir)
    judged = {q: t for q, t in ds.queries.items() if q in ds.qrels}
    run = bm25_search(ds.corpus, judged, k=5)
    oracle = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.5"}).evaluate(run)
    assert out["num_queries"] == len(oracle) == 2 and "seconds" in out
    assert out["ndcg@10"] == pytest.approx(sum(v["ndcg_cut_10"] for v in oracle.values()) / 2, abs=1e-12)
    assert out["recall@5"] == pytest.approx(sum(v["recall_5"] for v in oracle.values()) / 2, abs=1e-12)


def test_cli_bad_split_is_clean_error(tiny_beir, capsys):
    assert main(["eval", "--data", str(tiny_beir), "--split", "dev"]) == 2
    assert "splits found: test, train" in capsys.readouterr().err


def test_format_table():
    table = format_table({"bm25": {"ndcg@10": 0.5, "num_queries": 3}})
    assert table.splitlines()[2] == "| bm25 | 0.5000 | 3 |"


@pytest.mark.parametrize("name", ["scifact", "nfcorpus"])
def test_metrics_equal_pytrec_eval_on_real_bm25_runs(beir_data, name):
    ds = load_dataset(beir_data / name)
    run = bm25_search(ds.corpus, ds.queries, k=100)
    per_query, _ = evaluate(run, ds.qrels, ["ndcg@10", "recall@100", "map@100", "p@10"], ignore_identical_ids=False)
    oracle = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100", "map_cut.100", "P.10"}).evaluate(run)
    assert len(oracle) == len(ds.queries)
    for qid, v in oracle.items():
        got = per_query[qid]
        assert abs(got["ndcg@10"] - v["ndcg_cut_10"]) < 1e-9
        assert abs(got["recall@100"] - v["recall_100"]) < 1e-9
        assert abs(got["map@100"] - v["map_cut_100"]) < 1e-9
        assert abs(got["p@10"] - v["P_10"]) < 1e-9


def test_scifact_bm25_cli(beir_data, capsys):
    assert main(["eval", "--data", str(beir_data / "scifact"), "--retriever", "bm25", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ndcg@10"] >= 0.68 and out["num_queries"] == 300


def test_rerank_task_and_first_stage_groups_share_one_dense_index(tiny_beir, tiny_bert, tmp_path):
    """The scifact benches' data preparation: evaluated queries + first stage, and training groups from another
    split of the same corpus through the same index folder. Expected values come from the data and pytrec_eval, not
    from the functions under test (fails if a row's nDCG were computed on another run, if a group's positives were
    not its qrels' or a judged document became a negative, or if the second call built a new index)."""
    from densekit.core.text import doc_text
    from densekit.eval.reranking import RerankTask, first_stage_groups

    index = tmp_path / "index"
    task = RerankTask.load(str(tiny_beir), "test", k=2, max_queries=2, depth=4, model=str(tiny_bert), index_dir=str(index))
    test = load_dataset(tiny_beir, "test")
    assert list(task.queries) == sorted(test.queries)[:2] and task.k == 2
    assert all(len(docs) == 4 and set(docs) <= set(test.corpus) for docs in task.first.values())
    row = task.row("dense", task.first, extra=1)
    judged = {q: task.first[q] for q in task.first if q in test.qrels}
    oracle = pytrec_eval.RelevanceEvaluator(test.qrels, {"ndcg_cut.10"}).evaluate(judged)
    assert row["ndcg@10"] == round(sum(v["ndcg_cut_10"] for v in oracle.values()) / len(oracle), 4)
    assert {k: row[k] for k in ("system", "queries", "rerank_top_k", "extra")} == \
        {"system": "dense", "queries": 2, "rerank_top_k": 2, "extra": 1}

    built = {p: p.stat().st_mtime_ns for p in index.rglob("*") if p.is_file()}
    groups = first_stage_groups(str(tiny_beir), "train", depth=4, model=str(tiny_bert), index_dir=str(index))
    assert {p: p.stat().st_mtime_ns for p in index.rglob("*") if p.is_file()} == built  # the index was reused
    train = load_dataset(tiny_beir, "train")
    assert [g["query"] for g in groups] == [train.queries[q] for q in sorted(train.qrels)]
    for group, qid in zip(groups, sorted(train.qrels)):
        assert group["positives"] == [doc_text(train.corpus[d]) for d, g in train.qrels[qid].items() if g >= 1]
        judged_texts = {doc_text(train.corpus[d]) for d in train.qrels[qid]}
        assert group["negatives"] and not set(group["negatives"]) & judged_texts and len(group["negatives"]) <= 4


def test_plot_gradient_weights_writes_a_png(tmp_path):
    from densekit.eval.plots import plot_gradient_weights

    rows = [{"step": s, "w_sft_pos": 0.5, "w_sft_neg": 0.1, "w_cl_pos": 0.9 - 0.1 * s, "w_cl_neg": 0.05} for s in (1, 2, 3)]
    path = plot_gradient_weights({"SFT": rows, "CL": rows}, tmp_path / "plots" / "weights.png")
    assert path == tmp_path / "plots" / "weights.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_doc_ids_leave_a_run_in_one_place():
    """``drop_unknown_docs`` keeps every query and the order-free scores of known documents, and counts the rest;
    fails if a query with no known document disappeared (it must still count 0 in the means)."""
    from densekit.core.runs import drop_unknown_docs

    run = {"q1": {"d1": 2.0, "zz": 1.0}, "q2": {"zz": 3.0}, "q3": {}}
    assert drop_unknown_docs(run, {"d1": {}, "d2": {}}) == ({"q1": {"d1": 2.0}, "q2": {}, "q3": {}}, 2)
