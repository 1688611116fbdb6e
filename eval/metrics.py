"""IR metrics with trec_eval / pytrec_eval semantics, plain dicts in and out.

``compute(qrels, run, ["ndcg@10", "mrr@10", "recall@100", "map@100", "p@10"])`` returns
``{query_id: {"ndcg@10": ..., ...}}`` for every query that is in both ``run`` and ``qrels``
(pytrec_eval evaluates exactly those). Conventions, identical to trec_eval:

- ranking: score descending, ties broken by doc id descending (``strcmp`` order);
- a document is relevant for the binary measures when its qrels grade is >= ``relevance_level``;
  nDCG uses the grades themselves as gains (``dcg = sum_i g_i / log2(i + 1)``, i the 1-based rank,
  ideal = the query's judged grades sorted descending, both cut at k);
- ``recall@k = |rel in top k| / |rel|``; ``p@k = |rel in top k| / k``;
  ``map@k = sum_{relevant d in top k} P@rank(d) / |rel|``; ``mrr@k = 1 / rank of first relevant in top k``;
  all are 0 for a query with no relevant documents.

``roc_auc`` is the Mann–Whitney AUC of relevant vs non-relevant scores (ties count one half).

``evaluate(run, qrels, metrics)`` is the entry point: ``(per_query, means)`` of a run, like beir's
``ignore_identical_ids`` first dropping any document whose id equals its query id.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from densekit.core.runs import rank

from densekit.core.types import Qrels, Run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "p@10")
MEASURES = ("ndcg", "mrr", "recall", "map", "p")
_ALIASES = {"precision": "p", "recip_rank": "mrr", "ndcg_cut": "ndcg", "map_cut": "map"}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` -> ``("ndcg", 10)``; raises ValueError for an unknown measure or a bad cut-off."""
    measure, sep, cut = name.lower().partition("@")
    measure = _ALIASES.get(measure, measure)
    if measure not in MEASURES or not sep or not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"unknown metric {name!r}: use <measure>@<k> with measure in {', '.join(MEASURES)}")
    return measure, int(cut)


def _query_metrics(judged: dict[str, int], ranking: list[str], parsed: list[tuple[str, str, int]], level: int) -> dict[str, float]:
    num_rel = sum(1 for grade in judged.values() if grade >= level)
    max_k = max(k for _, _, k in parsed)
    top = ranking[:max_k]
    is_rel = [judged.get(doc, 0) >= level for doc in top]
    gains = [max(judged.get(doc, 0), 0) for doc in top]
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)

    out: dict[str, float] = {}
    for name, measure, k in parsed:
        hits = is_rel[:k]
        if measure == "ndcg":
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            out[name] = dcg / idcg if idcg > 0 else 0.0
        elif measure == "recall":
            out[name] = sum(hits) / num_rel if num_rel else 0.0
        elif measure == "p":
            out[name] = sum(hits) / k
        elif measure == "mrr":
            out[name] = next((1.0 / (i + 1) for i, rel in enumerate(hits) if rel), 0.0)
        elif measure == "map":
            found, total = 0, 0.0
            for i, rel in enumerate(hits):
                if rel:
                    found += 1
                    total += found / (i + 1)
            out[name] = total / num_rel if num_rel else 0.0
    return out


def check_relevance_level(relevance_level: int) -> None:
    """pytrec_eval (trec_eval) refuses a relevance level below 1: grade-0 (judged non-relevant) documents
    would count as relevant and every binary measure would be wrong. Raise ValueError for it."""
    if isinstance(relevance_level, bool) or not isinstance(relevance_level, (int, np.integer)) or relevance_level < 1:
        raise ValueError(f"relevance level must be an integer >= 1 (pytrec_eval refuses {relevance_level!r}); "
                         "use 1 for BEIR, 2 for TREC DL binary measures")


def check_scores(run: Run) -> None:
    """Raise ValueError naming the query and doc of the first NaN score: NaN compares false with every
    number, so its document's rank (and every metric) would be arbitrary."""
    for qid, doc_scores in run.items():
        for doc, score in doc_scores.items():
            if math.isnan(score):
                raise ValueError(f"score of doc {doc!r} for query {qid!r} is NaN: no metric is defined for a "
                                 "ranking with NaN scores (a diverged model or reranker?)")


def check_qrels(qrels: Qrels) -> None:
    """Raise ValueError naming the query and doc of the first grade that is not an integer: pytrec_eval refuses
    it ("Expected relevance to be integer"), and a grade of 0.5 has no meaning for the binary measures."""
    for qid, docs in qrels.items():
        for doc, grade in docs.items():
            if not isinstance(grade, (int, np.integer)):  # bool is an int, as pytrec_eval takes it
                raise ValueError(f"qrels grade of doc {doc!r} for query {qid!r} is {grade!r}, not an integer: "
                                 "relevance grades are integers (pytrec_eval refuses others)")


def compute(qrels: Qrels, run: Run, metrics: Iterable[str], relevance_level: int = 1) -> dict[str, dict[str, float]]:
    """Per-query metric values for the queries present in both ``run`` and ``qrels``. A NaN score
    (``check_scores``) or a grade that is not an integer (``check_qrels``) raises ValueError."""
    check_relevance_level(relevance_level)
    check_qrels({qid: qrels[qid] for qid in run if qid in qrels})
    check_scores({qid: docs for qid, docs in run.items() if qid in qrels})
    parsed = [(name, *parse_metric(name)) for name in metrics]
    if not parsed:
        raise ValueError("no metrics requested")
    return {
        qid: _query_metrics(qrels[qid], rank(doc_scores), parsed, relevance_level)
        for qid, doc_scores in run.items()
        if qid in qrels
    }


def mean(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    """Arithmetic mean of each metric over the queries of ``per_query`` (BEIR's convention)."""
    if not per_query:
        return {}
    names = next(iter(per_query.values())).keys()
    return {name: float(np.mean([values[name] for values in per_query.values()])) for name in names}


# ---------------------------------------------------------------- ROC / AUC

def labelled_scores(qrels: Qrels, run: Run, k: int | None = None, relevance_level: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scores and 0/1 labels of every (query, doc) pair in the top ``k`` of each judged query (NaN: ValueError)."""
    check_relevance_level(relevance_level)
    check_qrels({qid: qrels[qid] for qid in run if qid in qrels})
    check_scores({qid: docs for qid, docs in run.items() if qid in qrels})
    scores, labels = [], []
    for qid, doc_scores in run.items():
        if qid not in qrels:
            continue
        judged = qrels[qid]
        for doc in rank(doc_scores)[:k]:
            scores.append(float(doc_scores[doc]))
            labels.append(judged.get(doc, 0) >= relevance_level)
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2; NaN without both classes."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # average 1-based ranks over tied groups
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(qrels: Qrels, run: Run, k: int | None = None, relevance_level: int = 1) -> float:
    """Global ROC-AUC: all relevant vs all non-relevant (query, doc) scores in the top ``k`` of all queries.

    One threshold for all queries: this is the calibration ("thresholdability") the MW loss targets.
    """
    return auc(*labelled_scores(qrels, run, k, relevance_level))


def roc_auc_per_query(qrels: Qrels, run: Run, k: int | None = None, relevance_level: int = 1) -> dict[str, float]:
    """AUC of each judged query's top ``k`` (queries without both classes are left out)."""
    out = {}
    for qid in run:
        if qid in qrels:
            value = auc(*labelled_scores(qrels, {qid: run[qid]}, k, relevance_level))
            if not math.isnan(value):
                out[qid] = value
    return out


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold (descending), from (0, 0) to (1, 1)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_group = np.r_[np.diff(scores) != 0, True]
    tps = np.cumsum(labels)[last_of_group]
    fps = np.cumsum(~labels)[last_of_group]
    tpr = np.r_[0.0, tps / max(labels.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~labels).sum(), 1)]
    return fpr, tpr


def drop_identical_ids(run: Run) -> Run:
    """Remove documents whose id equals the query id (beir's ``ignore_identical_ids``)."""
    return {qid: {doc: s for doc, s in docs.items() if doc != qid} for qid, docs in run.items()}


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS, relevance_level: int = 1,
             ignore_identical_ids: bool = True, auc_k: int | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-query values and their means over the queries present in both run and qrels.

    This is pytrec_eval's convention (and beir's): a query of ``run`` with an empty ranking counts 0, a
    query absent from ``run`` is not averaged at all. ``densekit eval`` therefore puts every evaluated
    query into the run (empty when it has no hits). ``relevance_level`` must be >= 1 (ValueError).

    With ``auc_k`` set, the means also hold ``auc@<k>``: the global ROC-AUC of relevant vs non-relevant
    scores over every query's top ``auc_k`` (see ``roc_auc``).
    """
    check_relevance_level(relevance_level)
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    per_query = compute(qrels, run, list(metrics), relevance_level)
    means = mean(per_query)
    if auc_k is not None:
        means[f"auc@{auc_k}"] = roc_auc(qrels, run, auc_k, relevance_level)
    return per_query, means
