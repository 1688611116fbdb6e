import itertools
import math

import numpy as np
import pytest
import pytrec_eval
from hypothesis import given, settings, strategies as st

from densekit.eval import metrics as M
from densekit.core.runs import top_k

CUTS = (1, 3, 5, 10)
OUR = [f"{m}@{k}" for m in ("ndcg", "recall", "map", "p") for k in CUTS]
TREC = {"ndcg": "ndcg_cut_{}", "recall": "recall_{}", "map": "map_cut_{}", "p": "P_{}"}


def assert_equal_to_pytrec(qrels, run, level=1):
    ours = M.compute(qrels, run, OUR + [f"mrr@{k}" for k in CUTS], relevance_level=level)
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,3,5,10", "recall.1,3,5,10", "map_cut.1,3,5,10", "P.1,3,5,10"},
                                            relevance_level=level).evaluate(run)
    assert set(ours) == set(oracle)
    for qid, values in oracle.items():
        for name in OUR:
            measure, k = M.parse_metric(name)
            assert abs(ours[qid][name] - values[TREC[measure].format(k)]) < 1e-9, (qid, name)
    for k in CUTS:  # MRR@k == trec_eval's recip_rank on the run cut at k
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=level).evaluate(top_k(run, k))
        for qid, values in rr.items():
            assert abs(ours[qid][f"mrr@{k}"] - values["recip_rank"]) < 1e-9, (qid, k)


doc_ids = st.sampled_from([f"d{i}" for i in range(12)])
runs = st.dictionaries(st.sampled_from(["q1", "q2", "q3", "q4"]),
                       st.dictionaries(doc_ids, st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, 3.25]), min_size=1, max_size=12),
                       min_size=1, max_size=4)
qrelss = st.dictionaries(st.sampled_from(["q1", "q2", "q3", "q5"]),
                         st.dictionaries(doc_ids, st.integers(0, 3), min_size=1, max_size=8), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(qrels=qrelss, run=runs, level=st.sampled_from([1, 2]))
def test_equal_to_pytrec_eval_on_generated_runs(qrels, run, level):
    """Graded qrels, many ties, queries without relevant docs, relevant docs absent from the run."""
    assert_equal_to_pytrec(qrels, run, level)


def test_tie_break_is_doc_id_descending():
    assert M.rank({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]
    qrels = {"q": {"a": 1}}
    ours = M.compute(qrels, {"q": {"a": 1.0, "b": 1.0}}, ["mrr@10", "ndcg@1"])["q"]
    assert ours == {"mrr@10": 0.5, "ndcg@1": 0.0}


def test_hand_computed_ndcg():
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": {"c": 3.0, "a": 2.0, "x": 1.0, "b": 0.5}}
    value = M.compute(qrels, run, ["ndcg@3"])["q"]["ndcg@3"]
    dcg = 2 / math.log2(3)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert value == pytest.approx(dcg / idcg, abs=1e-12)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        M.parse_metric("ndcg")
    with pytest.raises(ValueError, match="unknown metric"):
        M.parse_metric("bleu@3")


def test_mean_over_evaluated_queries():
    per_query = M.compute({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}, "q2": {"a": 1.0}}, ["p@1"])
    assert M.mean(per_query) == {"p@1": 0.5}


def brute_force_auc(scores, labels):
    pos = [s for s, l in zip(scores, labels) if l]
    neg = [s for s, l in zip(scores, labels) if not l]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.7, 1.0]), st.booleans()), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition(pairs):
    scores, labels = zip(*pairs)
    expected = brute_force_auc(scores, labels) if any(labels) and not all(labels) else float("nan")
    got = M.auc(np.array(scores), np.array(labels))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


def test_global_auc_pools_queries_and_cuts_at_k():
    qrels = {"q1": {"a": 1}, "q2": {"c": 2}}
    run = {"q1": {"a": 0.9, "b": 0.95}, "q2": {"c": 0.2, "d": 0.1, "e": 0.05}}
    # pairs: a(0.9) beats d,e and loses to b; c(0.2) beats d,e and loses to b  -> 4 wins / 6
    assert M.roc_auc(qrels, run) == pytest.approx(4 / 6)
    assert M.roc_auc(qrels, run, k=1) == 0.0  # top-1 only: b (neg, 0.95) vs c (pos, 0.2)
    assert M.roc_auc_per_query(qrels, run) == {"q1": 0.0, "q2": 1.0}


def test_roc_curve_endpoints_and_area():
    scores, labels = np.array([0.9, 0.8, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0, 0], bool)
    fpr, tpr = M.roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auc(scores, labels))
