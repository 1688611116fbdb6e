"""Run helpers: the one ranking order used everywhere (metrics, run files, mining, reranking), the one way doc ids
absent from a corpus leave a run, and the per-query score normalisation every fusion uses (first stage + reranker,
BM25 + dense)."""
from __future__ import annotations

import math

NORMS = ("z", "minmax")


def rank(doc_scores: dict[str, float]) -> list[str]:
    """Doc ids in trec_eval order: score descending, ties broken by doc id descending.

    trec_eval (and pytrec_eval) keep scores as C ``float``: scores are compared after rounding to 32-bit
    floats, so two scores that differ only below float32 precision tie (and the doc id decides), exactly as
    there. float32 scores (FAISS, bm25s) are unaffected."""
    import numpy as np

    docs = list(doc_scores)
    with np.errstate(over="ignore"):
        scores32 = np.asarray([float(doc_scores[d]) for d in docs], dtype=np.float64).astype(np.float32).tolist()
    return [doc for _, doc in sorted(zip(scores32, docs), reverse=True)]


def top_k(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Keep the ``k`` best documents of each query."""
    return {qid: {doc: docs[doc] for doc in rank(docs)[:k]} for qid, docs in run.items()}


def drop_unknown_docs(run: dict[str, dict[str, float]], corpus) -> tuple[dict[str, dict[str, float]], int]:
    """``(run without the doc ids absent from corpus, how many were dropped)``; every query stays (empty if none of
    its documents is known). A run read from a file or another corpus version can name documents a reranker or
    training cannot read; callers say the count."""
    kept = {qid: {d: s for d, s in docs.items() if d in corpus} for qid, docs in run.items()}
    return kept, sum(len(docs) for docs in run.values()) - sum(len(docs) for docs in kept.values())


def normalise(scores: dict[str, float], norm: str = "z") -> dict[str, float]:
    """Per-query normalisation of ``{doc: score}``: ``z`` = (s - mean) / std (population std; a constant list
    -> 0), ``minmax`` = (s - min) / (max - min) (constant -> 0)."""
    if norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}: use z or minmax")
    values = list(scores.values())
    if not values:
        return {}
    if norm == "z":
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        return {d: (s - mean) / std if std > 0 else 0.0 for d, s in scores.items()}
    low, high = min(values), max(values)
    return {d: (s - low) / (high - low) if high > low else 0.0 for d, s in scores.items()}
