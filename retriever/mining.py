"""Hard-negative mining from any first-stage run (densekit index, BM25, or both fused: hybrid).

``mine_negatives`` runs the first stage (a saved densekit index of the corpus, BM25, or hybrid) for the judged
queries and ``select_negatives`` keeps, for each query, the documents at ranks ``[rank_from, rank_to)`` of its
run (0-based, trec_eval order) that are not judged relevant (any qrels entry >= 1), optionally
dropping likely false negatives: a candidate whose score exceeds ``max_ratio`` x the query's lowest
positive score is skipped (NV-Retriever's "TopK-PercPos" filter). ``write_mined`` writes the JSONL
training format read by ``examples.read_jsonl_examples``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import MineConfig
from .index import Index
from densekit.core.io import write_jsonl
from densekit.core.runs import rank
from densekit.core.types import Qrels, Queries, Run


def select_negatives(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], rank_from: int = 0,
                     rank_to: int = 30, max_negatives: int | None = None, positive_scores: dict[str, float] | None = None,
                     max_ratio: float | None = None, relevance_level: int = 1) -> dict[str, list[str]]:
    """Mined negatives per query (see module doc). Queries absent from ``qrels`` are ignored."""
    if not 0 <= rank_from < rank_to:
        raise ValueError(f"need 0 <= rank_from < rank_to, got {rank_from}, {rank_to}")
    out = {}
    for qid, doc_scores in run.items():
        if qid not in qrels:
            continue
        relevant = {d for d, g in qrels[qid].items() if g >= relevance_level}
        ceiling = None
        if max_ratio is not None and positive_scores and qid in positive_scores:
            ceiling = max_ratio * positive_scores[qid]
        negatives = [d for d in rank(doc_scores)[rank_from:rank_to]
                     if d not in relevant and d != qid and (ceiling is None or doc_scores[d] <= ceiling)]
        out[qid] = negatives[:max_negatives] if max_negatives else negatives
    return out


def dense_positive_scores(index: Index, query_ids: list[str], query_vectors: np.ndarray,
                          qrels: dict[str, dict[str, int]], relevance_level: int = 1) -> dict[str, float]:
    """Each query's lowest score over its relevant documents present in the index."""
    out = {}
    for qid, vec in zip(query_ids, query_vectors):
        docs = [d for d, g in qrels.get(qid, {}).items() if g >= relevance_level and d in index]
        if docs:
            out[qid] = float((index.reconstruct(docs) @ vec).min())
    return out


def mined_rows(queries: dict[str, str], qrels: dict[str, dict[str, int]], negatives: dict[str, list[str]],
               relevance_level: int = 1) -> list[dict]:
    """``{"query_id", "query", "positives": [ids], "negatives": [ids]}`` per mined query (sorted ids)."""
    return [{"query_id": qid, "query": queries[qid],
             "positives": [d for d, g in qrels[qid].items() if g >= relevance_level], "negatives": negs}
            for qid, negs in sorted(negatives.items()) if qid in queries]


def write_mined(path: str | Path, queries: dict[str, str], qrels: dict[str, dict[str, int]],
                negatives: dict[str, list[str]], relevance_level: int = 1, overwrite: bool = False) -> int:
    """Write ``mined_rows`` as JSONL lines (atomically; an existing file is replaced only with ``overwrite``);
    returns the count."""
    rows = mined_rows(queries, qrels, negatives, relevance_level)
    write_jsonl(path, rows, overwrite)
    return len(rows)


def mine_negatives(corpus, queries: Queries, qrels: Qrels, config: MineConfig | None = None,
                   index_dir: str | Path | None = None, model: str | None = None, batch_size: int = 64,
                   retriever: str | None = None, hybrid_weight: float | None = 0.5,
                   hybrid_norm: str = "z") -> dict[str, list[str]]:
    """Negatives of every judged query from the ``retriever``'s run (default: ``dense`` with ``index_dir``, else
    ``bm25``): the dense index saved in ``index_dir`` (searched with ``model``, default the index's own encoder; the
    index must be that encoder's index of this corpus, ``search.open_index``), BM25, or ``hybrid`` (both, fused per
    query with ``hybrid_weight`` / ``hybrid_norm``: ``hybrid.fuse_runs``). ``max_ratio`` needs the dense scores of
    the positives (dense only)."""
    from .search import encode_queries, open_index

    config = config or MineConfig()
    retriever = retriever or ("dense" if index_dir is not None else "bm25")
    if retriever not in ("bm25", "dense", "hybrid"):
        raise ValueError(f"unknown retriever {retriever!r}: use bm25, dense or hybrid")
    if (retriever == "bm25") != (index_dir is None):
        raise ValueError(f"mining with {retriever} {'takes no' if retriever == 'bm25' else 'needs a dense'} --index")
    if config.max_ratio is not None and retriever != "dense":
        raise ValueError("max_ratio compares dense scores: mine from a dense index (--index) or drop --max-ratio")
    judged = {q: t for q, t in queries.items() if q in qrels}
    positive_scores = None
    if retriever == "bm25":
        from .bm25 import bm25_search

        run: Run = bm25_search(corpus, judged, config.rank_to)
    else:
        from .encoder import DualEncoder

        encoder = DualEncoder.from_pretrained(model or Index.read_meta(index_dir)["model"])
        index = open_index(index_dir, encoder, corpus)
        query_ids, vectors = encode_queries(encoder, judged, batch_size)
        run = index.search_run(query_ids, vectors, config.rank_to)
        if retriever == "hybrid":
            from .bm25 import bm25_search
            from .hybrid import fuse_runs

            run = fuse_runs(bm25_search(corpus, judged, config.rank_to), run, hybrid_weight, hybrid_norm, config.rank_to)
        else:
            positive_scores = dense_positive_scores(index, query_ids, vectors, qrels, config.relevance_level)
    return select_negatives(run, qrels, config.rank_from, config.rank_to, config.max_negatives, positive_scores,
                            config.max_ratio, config.relevance_level)
