"""Score fusion of a first stage and a reranker, per query.

For each query, over the documents both scored (the reranked top k), each score list is normalised
(``z``: (s - mean) / std, a constant list -> 0; ``minmax``: (s - min) / (max - min), constant -> 0) and

    final = (1 - w) * norm(first) + w * norm(rerank),      w in [0, 1]

``w = 0`` keeps the first-stage order, ``w = 1`` the reranker's. Documents the reranker did not see
stay below the fused ones in first-stage order. The fused run carries rank scores (n, n-1, ..., 1
for a query's n documents): ``final`` orders them, ties (and float-precision near-ties) broken by
first-stage order, so a ranking read back from a TREC file is exactly the fused one. ``tune_weight`` picks ``w`` on a tuning split's runs
and qrels: the evaluated split's qrels never enter it.
"""
from __future__ import annotations

from typing import Sequence

from densekit.core.runs import normalise, rank

GRID = tuple(round(i / 20, 2) for i in range(21))


def fuse(first: dict[str, dict[str, float]], reranked: dict[str, dict[str, float]], weight: float, top_k: int,
         norm: str = "z") -> dict[str, dict[str, float]]:
    """Fuse each query's first-stage top ``top_k`` with the reranker's scores of those documents."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    out = {}
    for qid, docs in first.items():
        ranking = rank(docs)
        head = [d for d in ranking[:top_k] if d in reranked.get(qid, {})]
        a = normalise({d: docs[d] for d in head}, norm)
        b = normalise({d: reranked[qid][d] for d in head}, norm)
        fused = {d: (1.0 - weight) * a[d] + weight * b[d] for d in head}
        position = {d: i for i, d in enumerate(ranking)}
        order = sorted(head, key=lambda d: (-fused[d], position[d]))
        tail = [d for d in ranking if d not in fused]
        out[qid] = {d: float(len(ranking) - i) for i, d in enumerate(order + tail)}
    return out


def tune_weight(first: dict, reranked: dict, qrels: dict, top_k: int, metric: str = "ndcg@10", norm: str = "z",
                grid: Sequence[float] = GRID, relevance_level: int = 1) -> tuple[float, dict[float, float]]:
    """The ``w`` of ``grid`` with the best mean ``metric`` on the tuning queries (ties: the smaller
    ``w``), and the whole curve ``{w: metric}``."""
    return choose_weight(lambda w: fuse(first, reranked, w, top_k, norm), qrels, metric, grid, relevance_level)


def choose_weight(fused_run, qrels: dict, metric: str = "ndcg@10", grid: Sequence[float] = GRID,
                  relevance_level: int = 1) -> tuple[float, dict[float, float]]:
    """The ``w`` of ``grid`` whose run ``fused_run(w)`` has the best mean ``metric`` on ``qrels`` (ties: the
    smaller ``w``), and the whole curve ``{w: metric}``. Only ``qrels`` (a tuning split's) is read."""
    from densekit.eval.metrics import evaluate

    if not qrels:
        raise ValueError("weight tuning needs judged queries; the tuning split has none")
    curve = {w: evaluate(fused_run(w), qrels, [metric], relevance_level)[1][metric] for w in grid}
    best = max(curve.values())
    return min(w for w, v in curve.items() if v == best), curve
