"""Run helpers: the one ranking order used everywhere (metrics, run files, mining, reranking)."""
from __future__ import annotations


def rank(doc_scores: dict[str, float]) -> list[str]:
    """Doc ids in trec_eval order: score descending, ties broken by doc id descending."""
    return [doc for doc, _ in sorted(doc_scores.items(), key=lambda item: (float(item[1]), item[0]), reverse=True)]


def top_k(run: dict[str, dict[str, float]], k: int) -> dict[str, dict[str, float]]:
    """Keep the ``k`` best documents of each query."""
    return {qid: {doc: docs[doc] for doc in rank(docs)[:k]} for qid, docs in run.items()}
