"""The first stage every pipeline starts from: ``first_stage("bm25" | "dense" | "hybrid", corpus, queries, k)``, one
run ``{query_id: {doc_id: score}}`` from BM25, a dense encoder + FAISS index, or both fused."""
from __future__ import annotations

from densekit.core.types import Queries, Run

from .bm25 import bm25_search
from .config import DEFAULT_ENCODER
from .hybrid import hybrid_search
from .search import dense_search


def first_stage(retriever: str, corpus, queries: Queries, k: int, model: str | None = None,
                index_dir: str | None = None, factory: str = "Flat", batch_size: int = 64,
                nprobe: int | None = None, ef_search: int | None = None, hybrid_weight: float | None = 0.5,
                hybrid_norm: str = "z") -> Run:
    """Top-``k`` run from ``bm25`` (``bm25.bm25_search``), ``dense`` (a densekit encoder, default
    all-MiniLM-L6-v2, + FAISS index, built or reused: ``dense_search``) or ``hybrid`` (both, fused per query with
    ``hybrid_weight`` and ``hybrid_norm``: ``hybrid.hybrid_search``); ``corpus`` a BEIR dict or an Arrow dataset."""
    if retriever == "bm25":
        return bm25_search(corpus, queries, k)
    if retriever == "dense":
        return dense_search(corpus, queries, k, model=model or DEFAULT_ENCODER, index_dir=index_dir, factory=factory,
                            batch_size=batch_size, nprobe=nprobe, ef_search=ef_search)
    if retriever == "hybrid":
        return hybrid_search(corpus, queries, k, hybrid_weight, hybrid_norm, model=model, index_dir=index_dir,
                             factory=factory, batch_size=batch_size, nprobe=nprobe, ef_search=ef_search)
    raise ValueError(f"unknown retriever {retriever!r}: use bm25, dense or hybrid")
