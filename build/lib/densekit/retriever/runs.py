"""Run helpers: the one ranking order used everywhere (metrics, run files, mining, reranking)."""
from __future__ import annotations


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
