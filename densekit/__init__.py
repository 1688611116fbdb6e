"""densekit: dense retrieval and reranking. The objects a user starts from, imported on first use (``import densekit``
reads no torch, transformers or faiss; ``densekit --help`` stays fast):

- ``DualEncoder`` (``densekit.retriever.encoder``): encode queries and documents; ``from_pretrained``, ``save``;
- ``Index`` (``densekit.retriever.index``): a FAISS index with string ids; ``build``, ``save``, ``load``, ``search``;
- ``bm25_search`` (``densekit.retriever.bm25``): BM25 runs ``{qid: {doc_id: score}}``;
- ``load_dataset`` (``densekit.eval.data``): a BEIR folder's corpus, queries and qrels of one split;
- ``evaluate`` (``densekit.eval.metrics``): per-query and mean metrics of a run, equal to pytrec_eval;
- ``compare`` (``densekit.eval.report``): paired t-tests, randomisation tests and win/tie/loss between runs;
- ``load_reranker`` and ``rerank`` (``densekit.reranker.base``): a reranker from a spec, and a run reranked by it.

The command line is ``densekit`` (``densekit.eval.cli``); the packages are ``densekit.core`` (types, safe writes,
model resolution, the training engine), ``densekit.retriever`` (first stages, encoders, index, training),
``densekit.reranker`` (reranker kinds and their training) and ``densekit.eval`` (data, metrics, run files,
reranking experiments, benchmark, CLI).
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DualEncoder": "densekit.retriever.encoder",
    "Index": "densekit.retriever.index",
    "bm25_search": "densekit.retriever.bm25",
    "load_dataset": "densekit.eval.data",
    "evaluate": "densekit.eval.metrics",
    "compare": "densekit.eval.report",
    "load_reranker": "densekit.reranker.base",
    "rerank": "densekit.reranker.base",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'densekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
