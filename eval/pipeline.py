"""Retrieve -> rerank -> evaluate, plus TREC run files and result tables.

``evaluate(run, qrels, metrics)`` returns ``(per_query, means)``; like beir's
``ignore_identical_ids`` it first drops any document whose id equals its query id.
Run files use the TREC format ``qid Q0 docid rank score tag``, written atomically.
"""
from __future__ import annotations

import json

import math
from pathlib import Path
from typing import Iterable

from . import metrics as M
from retriever.runs import top_k  # noqa: F401  (re-exported)

from .data import DataError, atomic_write_text

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "map@100", "p@10")


def drop_identical_ids(run: Run) -> Run:
    """Remove documents whose id equals the query id (beir's ``ignore_identical_ids``)."""
    return {qid: {doc: s for doc, s in docs.items() if doc != qid} for qid, docs in run.items()}


def evaluate(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS, relevance_level: int = 1,
             ignore_identical_ids: bool = True, auc_k: int | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-query values and their means over the queries present in both run and qrels.

    With ``auc_k`` set, the means also hold ``auc@<k>``: the global ROC-AUC of relevant vs non-relevant
    scores over every query's top ``auc_k`` (see ``metrics.roc_auc``).
    """
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    per_query = M.compute(qrels, run, list(metrics), relevance_level)
    means = M.mean(per_query)
    if auc_k is not None:
        means[f"auc@{auc_k}"] = M.roc_auc(qrels, run, auc_k, relevance_level)
    return per_query, means


def write_run(path: str | Path, run: Run, tag: str = "densekit") -> None:
    """Write a TREC run file (``qid Q0 docid rank score tag``), ranks in trec_eval order, atomically."""
    lines = []
    for qid in sorted(run):
        docs = run[qid]
        for position, doc in enumerate(M.rank(docs), start=1):
            lines.append(f"{qid} Q0 {doc} {position} {float(docs[doc])!r} {tag}\n")
    atomic_write_text(path, "".join(lines))


def read_run(path: str | Path) -> Run:
    """Read a TREC run file; a malformed line raises DataError naming the file and line."""
    path = Path(path)
    run: Run = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise DataError(f"{path}:{number}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}")
            try:
                score = float(fields[4])
            except ValueError:
                raise DataError(f"{path}:{number}: score {fields[4]!r} is not a number") from None
            if math.isnan(score):
                raise DataError(f"{path}:{number}: score is NaN")
            run.setdefault(fields[0], {})[fields[2]] = score
    return run


def format_table(rows: dict[str, dict[str, float]], digits: int = 4) -> str:
    """A Markdown table: one row per system, one column per metric."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(c for values in rows.values() for c in values))
    lines = ["| system | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for system, values in rows.items():
        cells = [f"{values[c]:.{digits}f}" if isinstance(values.get(c), float) else str(values.get(c, "")) for c in columns]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def first_stage(retriever: str, corpus: dict, queries: dict[str, str], k: int, model: str | None = None,
                index_dir: str | None = None, factory: str = "Flat", batch_size: int = 64) -> Run:
    """Top-``k`` run from ``bm25`` or ``dense`` (a densekit encoder + FAISS index, built or reused)."""
    if retriever == "bm25":
        from .bm25 import bm25_search

        return bm25_search(corpus, queries, k)
    if retriever == "dense":
        from retriever.search import dense_search

        return dense_search(corpus, queries, k, model=model, index_dir=index_dir, factory=factory, batch_size=batch_size)
    raise ValueError(f"unknown retriever {retriever!r}: use bm25 or dense")


def load_reranker(spec: str):
    """``spec``: a folder saved by reranker training (``reranker.json`` says pointwise or blockrank), a
    causal LM name/folder (zero-shot pointwise prompt), or ``blockrank:<folder or model>`` (BlockRank)."""
    from reranker.blockrank import BlockRanker
    from reranker.pointwise import LLMReranker

    cls = LLMReranker
    if spec.startswith("blockrank:"):
        cls, spec = BlockRanker, spec[len("blockrank:"):]
    saved = Path(spec) / "reranker.json"
    if saved.exists():
        kind = json.loads(saved.read_text()).get("kind", "pointwise")
        return (BlockRanker if kind == "blockrank" else LLMReranker).load(spec)
    return cls.from_pretrained(spec)


def rerank_stage(run: Run, corpus: dict, queries: dict[str, str], reranker, top_k: int, batch_size: int = 8,
                 mode: str = "attention") -> Run:
    """Re-score each query's top ``top_k`` with ``reranker`` (a reranker or a spec for ``load_reranker``);
    ``mode`` (attention | decode) applies to BlockRank."""
    if isinstance(reranker, str):
        reranker = load_reranker(reranker)
    extra = {"mode": mode} if getattr(reranker, "kind", "") == "blockrank" else {}
    return reranker.rerank(run, corpus, queries, top_k=top_k, batch_size=batch_size, **extra)


def training_groups(corpus: dict, queries: dict[str, str], qrels: Qrels, first_stage_run: Run, depth: int = 30,
                    min_negatives: int = 1) -> list[dict]:
    """Reranker/retriever training examples: qrels positives + the first stage's top ``depth`` minus positives."""
    from retriever.examples import from_qrels
    from retriever.mining import select_negatives

    negatives = select_negatives(first_stage_run, qrels, 0, depth)
    return from_qrels(corpus, queries, qrels, negatives, n_negatives=min_negatives)
