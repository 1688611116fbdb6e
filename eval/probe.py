"""Where does a causal LM's attention rank documents? The zero-shot BlockRank probe.

For each tuning query, one BlockRank prompt holds its candidates (in a seeded random order, so a
document's position says nothing about its relevance) and one forward through every layer gives
``BlockRanker.layer_masses``: per layer, per head, each document's attention mass from the query block.
Every (layer, choice) ranks the candidates by a mass and is scored by nDCG@10 against the qrels:

- signal tokens: the last 2 query-block tokens (the paper's) or every query-block token;
- per-document mass: summed over the document's tokens (a long document collects more) or averaged;
- heads: all heads averaged, or the ``k`` best heads. The best heads are chosen on one half of the
  queries (alternating in sorted id order) and scored on the other, and the other way round, so the
  table's figure for them is never measured on the queries that chose them.

``probe`` returns one row per (layer, choice) with its mean nDCG@10 over the queries, plus the random-order
figure; ``best_setting`` turns the best row into ``BlockRankConfig`` fields (heads then chosen on every
tuning query).

Across datasets (``pooled_rows``, ``best_pooled_setting``): the probe runs on each tuning dataset, and a row's pooled
figure is the mean of the datasets' figures, each dataset weighted equally whatever its query count; the best pooled
row gives the setting (best heads then chosen on every tuning query of every dataset, again each dataset weighted
equally), and each dataset's own best row is reported beside it.
"""
from __future__ import annotations

import numpy as np

from densekit.core.types import Qrels

from .metrics import compute
from .report import random_order

SIGNALS = {"last 2": 2, "all query": 0}   # signal_tokens of BlockRankConfig
REDUCES = ("sum", "mean")                 # doc_mass of BlockRankConfig
METRIC = "ndcg@10"


def per_query_ndcg(scores: dict[str, np.ndarray], docs: dict[str, list[str]], qrels: Qrels) -> dict[str, float]:
    """nDCG@10 of each query's documents ranked by ``scores[qid]`` (one score per document)."""
    run = {q: {d: float(s) for d, s in zip(docs[q], scores[q])} for q in scores}
    return {q: v[METRIC] for q, v in compute({q: qrels.get(q, {}) for q in run}, run, [METRIC]).items()}


def _head_means(masses: dict[str, np.ndarray], docs, qrels, queries: list[str]) -> np.ndarray:
    """Per head, the mean nDCG@10 over ``queries`` of the head's own ranking (``masses[q]``: ``[heads, N]``)."""
    heads = next(iter(masses.values())).shape[0]
    return np.array([np.mean(list(per_query_ndcg({q: masses[q][h] for q in queries}, docs, qrels).values()))
                     for h in range(heads)])


def _top(means: np.ndarray, k: int) -> list[int]:
    return sorted(int(h) for h in np.argsort(means, kind="stable")[::-1][:k])


def _best_heads(masses: dict[str, np.ndarray], docs, qrels, queries: list[str], k: int) -> list[int]:
    """The ``k`` heads whose own ranking has the best mean nDCG@10 over ``queries`` (``masses[q]``: ``[heads, N]``)."""
    return _top(_head_means(masses, docs, qrels, queries), k)


def probe(masses: dict[str, np.ndarray], docs: dict[str, list[str]], qrels: Qrels, k: int = 4) -> list[dict]:
    """Rows ``{layer, signal, doc_mass, heads, ndcg@10}`` from ``masses[qid]`` = ``layer_masses`` as an array
    ``[layers, 2 signals, 2 reduces, heads, N]`` and ``docs[qid]`` its documents in prompt order."""
    queries = sorted(masses)
    folds = [queries[0::2], queries[1::2]]
    layers = next(iter(masses.values())).shape[0]
    rows = []
    for layer in range(layers):
        for si, signal in enumerate(SIGNALS):
            for ri, reduce in enumerate(REDUCES):
                cut = {q: masses[q][layer, si, ri] for q in queries}
                every = per_query_ndcg({q: m.mean(0) for q, m in cut.items()}, docs, qrels)
                rows.append({"layer": layer, "signal": signal, "doc_mass": reduce, "heads": "all",
                             METRIC: float(np.mean([every[q] for q in queries]))})
                crossed = {}
                for choose, score in (folds, folds[::-1]):
                    heads = _best_heads(cut, docs, qrels, choose, k)
                    crossed.update(per_query_ndcg({q: cut[q][heads].mean(0) for q in score}, docs, qrels))
                rows.append({"layer": layer, "signal": signal, "doc_mass": reduce, "heads": f"best {k}",
                             METRIC: float(np.mean([crossed[q] for q in queries]))})
    return rows


def best_setting(rows: list[dict], masses: dict[str, np.ndarray], docs, qrels: Qrels, k: int = 4) -> dict:
    """``BlockRankConfig`` fields of the best row (ties: the earlier layer, then the simpler choice)."""
    best = max(rows, key=lambda r: r[METRIC])
    setting = {"score_layer": best["layer"], "signal_tokens": SIGNALS[best["signal"]], "doc_mass": best["doc_mass"],
               "score_heads": None}
    if best["heads"] != "all":
        si, ri = list(SIGNALS).index(best["signal"]), REDUCES.index(best["doc_mass"])
        cut = {q: m[best["layer"], si, ri] for q, m in masses.items()}
        setting["score_heads"] = _best_heads(cut, docs, qrels, sorted(masses), k)
    return setting


def _key(row: dict) -> tuple:
    return row["layer"], row["signal"], row["doc_mass"], row["heads"]


def pooled_rows(rows_by_dataset: dict[str, list[dict]]) -> list[dict]:
    """``probe`` rows of several datasets as one: per (layer, signal, doc_mass, heads), ``ndcg@10`` = the mean of the
    datasets' figures (each dataset weighted equally) and ``by_dataset`` = each dataset's own figure."""
    names = list(rows_by_dataset)
    tables = {name: {_key(r): r[METRIC] for r in rows} for name, rows in rows_by_dataset.items()}
    out = []
    for row in rows_by_dataset[names[0]]:
        key = _key(row)
        by = {name: tables[name][key] for name in names}
        out.append({"layer": row["layer"], "signal": row["signal"], "doc_mass": row["doc_mass"], "heads": row["heads"],
                    METRIC: float(np.mean(list(by.values()))), "by_dataset": by})
    return out


def best_pooled_setting(rows: list[dict], data: dict[str, tuple[dict, dict, Qrels]], k: int = 4) -> dict:
    """``BlockRankConfig`` fields of the best ``pooled_rows`` row; ``data[name] = (masses, docs, qrels)`` of each tuning
    dataset. Best heads: the ``k`` with the best mean over the datasets of their mean nDCG@10 on every tuning query."""
    best = max(rows, key=lambda r: r[METRIC])
    setting = {"score_layer": best["layer"], "signal_tokens": SIGNALS[best["signal"]], "doc_mass": best["doc_mass"],
               "score_heads": None}
    if best["heads"] != "all":
        si, ri = list(SIGNALS).index(best["signal"]), REDUCES.index(best["doc_mass"])
        means = np.mean([_head_means({q: m[best["layer"], si, ri] for q, m in masses.items()}, docs, qrels, sorted(masses))
                         for masses, docs, qrels in data.values()], axis=0)
        setting["score_heads"] = _top(means, k)
    return setting


def random_order_ndcg(docs: dict[str, list[str]], qrels: Qrels, shuffles: int = 10) -> float:
    """Mean over the queries of ``docs`` (``{qid: its documents}``) of ``report.random_order``'s nDCG@10
    (``shuffles`` seeds); scored as the probe's rows: a query without qrels counts 0, identical ids kept."""
    run = {q: {d: float(len(ds) - i) for i, d in enumerate(ds)} for q, ds in docs.items()}
    chance = random_order(run, {q: qrels.get(q, {}) for q in docs}, METRIC, shuffles, ignore_identical_ids=False)
    return float(np.mean(list(chance.values())))
