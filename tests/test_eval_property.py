"""Acceptance property of issue 11: whatever ``densekit eval --run FILE`` prints equals pytrec_eval's
number for the same run and qrels, or the command exits 2 with ``densekit: error: ...``; it never prints
a number pytrec_eval would not give.

Random tiny BEIR folders and TREC run files: queries without relevant documents (only grade 0 or
negative grades), judged queries missing from the run, run queries without qrels or text, runs
naming documents absent from the corpus, ties, documents whose id equals the query id, and the
options that change the numbers (--relevance-level, --top-k, --max-queries, --keep-identical-ids).
The reference is the beir convention: pytrec_eval on a run holding every evaluated query (the split's
queries with qrels and text, the first --max-queries of them in sorted order), averaged over all of them.
"""
import json
import math
import tempfile
from pathlib import Path

import pytest
import pytrec_eval
from hypothesis import HealthCheck, event, given, settings, strategies as st

from densekit.eval.cli import main
from densekit.eval.data import write_beir
from densekit.core.runs import top_k

QUERY_IDS = ["q0", "q1", "q2", "q3"]
DOC_IDS = [f"d{i}" for i in range(7)] + ["q0", "q1"]  # "q0"/"q1" as doc ids: identical-id cases

doc_id = st.sampled_from(DOC_IDS)
scores = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 3.25]),
                   st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False))
cases = st.fixed_dictionaries({
    "corpus": st.lists(doc_id, min_size=1, max_size=len(DOC_IDS), unique=True),
    # mostly every query has text; sometimes one lacks it (its qrels cannot be evaluated)
    "queries": st.one_of(st.just(QUERY_IDS), st.lists(st.sampled_from(QUERY_IDS), min_size=0, max_size=4, unique=True)),
    "qrels": st.dictionaries(st.sampled_from(QUERY_IDS), st.dictionaries(doc_id, st.integers(-1, 3), min_size=1, max_size=6),
                             min_size=1, max_size=4),
    "run": st.dictionaries(st.sampled_from(QUERY_IDS + ["q9"]), st.dictionaries(doc_id, scores, min_size=0, max_size=9),
                           min_size=2, max_size=5),
    "level": st.sampled_from([1, 2]),
    "top_k": st.sampled_from([1, 3, 5, 100]),
    "max_queries": st.sampled_from([None, 1, 2]),
    "keep_identical": st.booleans(),
})


def brute_auc(qrels, run, k, level):
    """Mann-Whitney AUC over all (relevant, non-relevant) pairs of every judged query's top k; None when undefined."""
    pos, neg = [], []
    for qid, docs in top_k(run, k).items():
        if qid in qrels:
            for doc, score in docs.items():
                (pos if qrels[qid].get(doc, 0) >= level else neg).append(score)
    if not pos or not neg:
        return None
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


def expected(case):
    """(error expected, {metric: value}) from pytrec_eval, or (True, None)."""
    qrels = case["qrels"]
    evaluated = sorted(q for q in qrels if q in case["queries"])[:case["max_queries"]]
    run_file_queries = {q for q, docs in case["run"].items() if docs}
    if not evaluated or not run_file_queries & set(evaluated):
        return True, None
    run = {q: dict(case["run"].get(q, {})) for q in evaluated}
    if not case["keep_identical"]:
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    k, level = case["top_k"], case["level"]
    measures = {"ndcg_cut.10", "P.10", f"recall.100,{k}", f"map_cut.100,{k}"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=level).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=level).evaluate(top_k(run, 10))
    assert set(per_query) == set(evaluated) == set(rr)
    n = len(evaluated)
    out = {"ndcg@10": "ndcg_cut_10", "p@10": "P_10", "recall@100": "recall_100", "map@100": "map_cut_100",
           f"recall@{k}": f"recall_{k}", f"map@{k}": f"map_cut_{k}"}
    values = {name: sum(v[key] for v in per_query.values()) / n for name, key in out.items()}
    values["mrr@10"] = sum(v["recip_rank"] for v in rr.values()) / n
    values[f"auc@{k}"] = brute_auc(qrels, run, k, level)
    values["num_queries"] = n
    return False, values


def write_case(folder: Path, case) -> Path:
    corpus = {d: {"title": "", "text": f"text of {d}"} for d in case["corpus"]}
    write_beir(folder / "data", corpus, {q: f"query {q}" for q in case["queries"]}, {"test": case["qrels"]})
    lines = []
    for qid, docs in case["run"].items():
        for rank, (doc, score) in enumerate(docs.items(), start=1):  # file order and rank column are not the ranking
            lines.append(f"{qid} Q0 {doc} {rank} {score!r} prop\n")
    (folder / "run.trec").write_text("".join(lines))
    return folder


@pytest.mark.filterwarnings("ignore::UserWarning")  # qrels naming docs absent from the random corpus
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases)
def test_eval_run_prints_only_pytrec_eval_numbers(case, capsys):
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_case(Path(tmp), case)
        argv = ["eval", "--data", str(folder / "data"), "--run", str(folder / "run.trec"), "--json",
                "--relevance-level", str(case["level"]), "--top-k", str(case["top_k"])]
        if case["max_queries"] is not None:
            argv += ["--max-queries", str(case["max_queries"])]
        if case["keep_identical"]:
            argv.append("--keep-identical-ids")
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    out, err = capsys.readouterr()
    want_error, want = expected(case)
    event("refused" if code else "scored")
    if code != 0:
        assert code == 2 and "densekit: error: " in err and not out.strip(), (code, err)
        assert want_error, f"refused a valid case: {err}"
        return
    assert not want_error, f"printed numbers for a case without evaluated queries: {out}"
    row = json.loads(out, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    printed = {name: value for name, value in row.items() if "@" in name}
    assert set(printed) == set(want) - {"num_queries"}
    assert row["num_queries"] == want["num_queries"]
    for name, value in want.items():
        if value is None:
            assert row[name] is None, name
        else:
            assert row[name] is not None and math.isclose(row[name], value, rel_tol=1e-9, abs_tol=1e-12), (name, row[name], value)


def test_scores_equal_in_float32_tie_like_trec_eval():
    """trec_eval keeps scores as C floats: 0.0 and -1e-300 tie and the doc id decides (found by the property test)."""
    from densekit.eval import metrics as M

    qrels, run = {"q1": {"d0": 1}}, {"q1": {"d0": 0.0, "d1": -1e-300}}
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)["q1"]["recip_rank"]
    assert oracle == 0.5 and M.compute(qrels, run, ["mrr@10"])["q1"]["mrr@10"] == 0.5
    assert M.rank({"a": 1.0, "b": 1.0 - 1e-9, "c": 1.0 - 1e-6}) == ["b", "a", "c"]
