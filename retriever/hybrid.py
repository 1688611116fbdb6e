"""Hybrid first stage: BM25 and a dense encoder fused per query (what pyserini users reach for first).

For each query, over the union of the two lists (each the retriever's top ``depth``):

- ``norm="z"`` or ``"minmax"``: each list's scores are normalised per query (``runs.normalise``), a document
  missing from one list gets that list's lowest normalised score, and
  ``score = (1 - w) * norm(bm25) + w * norm(dense)``, ``w`` in [0, 1] (0: BM25's order, 1: the dense order);
- ``norm="rrf"``: reciprocal-rank fusion (Cormack et al. 2009), ``score = 1 / (k + rank_bm25) + 1 / (k + rank_dense)``
  with ``k = 60`` and 1-based ranks; a document missing from a list adds nothing for it (no weight).

The fused run keeps each query's top ``k``. ``hybrid_search`` runs both retrievers (``bm25.bm25_search``,
``search.dense_search``: the index built in, or reused from, ``index_dir``); ``fuse_runs`` is the fusion alone,
for runs a caller already has (a weight tuned on a tuning split reuses them).
"""
from __future__ import annotations

from densekit.core.runs import NORMS, normalise, rank
from densekit.core.types import Queries, Run

HYBRID_NORMS = (*NORMS, "rrf")
RRF_K = 60


def fuse_runs(lexical: Run, dense: Run, weight: float | None = 0.5, norm: str = "z", k: int | None = None) -> Run:
    """The hybrid run of two runs over the same queries (module docstring); ``k`` cuts each query's fused list
    (None: keep the whole union). ``weight`` must be in [0, 1] for z/minmax and None for rrf."""
    if norm not in HYBRID_NORMS:
        raise ValueError(f"unknown hybrid normalisation {norm!r}: use {', '.join(HYBRID_NORMS)}")
    if norm == "rrf" and weight is not None:
        raise ValueError("reciprocal-rank fusion has no weight: drop the hybrid weight (or use z / minmax)")
    if norm != "rrf" and (weight is None or isinstance(weight, bool) or not 0.0 <= weight <= 1.0):
        raise ValueError(f"hybrid weight must be a number in [0, 1], got {weight!r}")
    out: Run = {}
    for qid in dict.fromkeys([*lexical, *dense]):
        a, b = lexical.get(qid, {}), dense.get(qid, {})
        if norm == "rrf":
            fused = {}
            for docs in (a, b):
                for position, doc in enumerate(rank(docs), start=1):
                    fused[doc] = fused.get(doc, 0.0) + 1.0 / (RRF_K + position)
        else:
            na, nb = normalise(a, norm), normalise(b, norm)
            floor_a, floor_b = min(na.values(), default=0.0), min(nb.values(), default=0.0)
            fused = {doc: (1.0 - weight) * na.get(doc, floor_a) + weight * nb.get(doc, floor_b)
                     for doc in dict.fromkeys([*a, *b])}
        out[qid] = fused if k is None else {doc: fused[doc] for doc in rank(fused)[:k]}
    return out


def hybrid_search(corpus, queries: Queries, k: int, weight: float | None = 0.5, norm: str = "z",
                  model: str | None = None, index_dir: str | None = None, factory: str = "Flat", batch_size: int = 64,
                  depth: int | None = None, nprobe: int | None = None, ef_search: int | None = None) -> Run:
    """Top-``k`` hybrid run: BM25 and dense (``model``) top ``depth`` (default ``k``) each, fused (``fuse_runs``)."""
    lexical, dense = hybrid_parts(corpus, queries, depth or k, model, index_dir, factory, batch_size, nprobe, ef_search)
    return fuse_runs(lexical, dense, weight, norm, k)


def hybrid_parts(corpus, queries: Queries, depth: int, model: str | None = None, index_dir: str | None = None,
                 factory: str = "Flat", batch_size: int = 64, nprobe: int | None = None,
                 ef_search: int | None = None) -> tuple[Run, Run]:
    """``(bm25 run, dense run)``, each the top ``depth`` of every query: the two lists a hybrid fuses."""
    from .bm25 import bm25_search
    from .config import DEFAULT_ENCODER
    from .search import dense_search

    lexical = bm25_search(corpus, queries, depth)
    dense = dense_search(corpus, queries, depth, model=model or DEFAULT_ENCODER, index_dir=index_dir, factory=factory,
                         batch_size=batch_size, nprobe=nprobe, ef_search=ef_search)
    return lexical, dense
