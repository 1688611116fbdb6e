"""A reranking experiment's pieces: the rerank stage over a first stage's top k, fusion weights tuned on a tuning
split (never the evaluated one), and the data of reranking benchmarks and training (``RerankTask``,
``first_stage_groups``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from densekit.core.io import DataError
from densekit.core.runs import drop_unknown_docs, top_k
from densekit.core.types import Qrels, Run

from .metrics import evaluate
from .runfile import read_run


def rerank_stage(run: Run, corpus: dict, queries: dict[str, str], reranker, top_k: int, batch_size: int = 8,
                 mode: str | None = None, show_progress: bool = True) -> Run:
    """Re-score each query's top ``top_k`` with ``reranker`` (a reranker, or a spec for
    ``densekit.reranker.base.load_reranker``: ``qlm:<model>``, ``blockrank:<folder>``, a saved folder, ...);
    ``mode`` is the kind's scoring mode (BlockRank: attention | decode)."""
    from densekit.reranker.base import load_reranker

    if isinstance(reranker, str):
        reranker = load_reranker(reranker)
    return reranker.rerank(run, corpus, queries, top_k=top_k, batch_size=batch_size, show_progress=show_progress, mode=mode)


def rerank_metric(run: Run, corpus: dict, queries: dict[str, str], qrels: Qrels, top_k: int,
                  metrics: Iterable[str] = ("ndcg@10",), mode: str | None = None):
    """``evaluate(reranker) -> {metric: mean}``: ``reranker``'s rerank of ``run``'s top ``top_k`` scored by
    pytrec_eval (``evaluate``) on ``qrels``, for watching a tuning split while a reranker trains
    (``densekit.reranker.train.train_reranker(evaluate=...)``). Pass a split that is not the reported one."""
    metrics = list(metrics)

    def measure(reranker) -> dict:
        reranked = reranker.rerank(run, corpus, queries, top_k=top_k, show_progress=False, mode=mode)
        return evaluate(reranked, qrels, metrics)[1]

    return measure


def tuning_split(folder: str | Path, split: str, requested: str | None = None) -> str:
    """The split whose qrels choose a fusion weight for ``split``: ``requested``, else dl20 for dl19
    (and back), else dev, else train. Never ``split`` itself."""
    from .data import available_splits

    splits = available_splits(folder)
    if requested is not None:
        if requested == split:
            raise ValueError(f"--tune-split {requested!r} is the evaluated split: tuning on it would report a tuned score")
        if requested not in splits:
            raise ValueError(f"{folder} has no split {requested!r} to tune on; it has {', '.join(splits)}")
        return requested
    for candidate in {"dl19": ("dl20",), "dl20": ("dl19",)}.get(split, ("dev", "train")):
        if candidate in splits and candidate != split:
            return candidate
    raise ValueError(f"--fuse auto needs a tuning split other than {split!r}, and {folder} has only "
                     f"{', '.join(splits)}: pass --tune-split NAME or a fixed --fuse W")


def check_tune_run(run: Run, path, queries: dict, split: str) -> None:
    """Refuse (DataError) a tuning run that shares no query with the tuning split's judged ``queries``: the
    weight "chosen" on it would be the default, not a tuned one (e.g. a run of the evaluated split)."""
    if not any(qid in run for qid in queries):
        raise DataError(f"--tune-run {path}: none of its {len(run)} queries is a judged query of the tuning split "
                        f"{split!r} ({len(queries)} queries); give the first-stage run of split {split!r} "
                        "(not of the evaluated split)")


def tune_fusion(folder: str | Path, split: str, reranker, k: int, norm: str = "z", max_queries: int = 100,
                retriever: str = "bm25", model: str | None = None, index_dir: str | None = None,
                run_file: str | None = None, mode: str | None = None, batch_size: int = 8,
                relevance_level: int = 1, first_k: int | None = None, hybrid: dict | None = None) -> tuple[float, int, dict]:
    """``(weight, queries used, {w: nDCG@10})``: the fusion weight with the best nDCG@10 on ``split``'s first
    ``max_queries`` judged queries (sorted ids), their first stage's top ``k`` (``retriever``, or ``run_file``)
    reranked by ``reranker``. The first stage is the evaluated system's: it retrieves ``first_k`` (default ``k``)
    documents, a hybrid with the evaluated system's ``hybrid`` weight and norm. Only ``split``'s qrels are read."""
    from densekit.retriever.first_stage import first_stage

    from .data import load_dataset, select_queries
    from .fusion import tune_weight

    ds = load_dataset(folder, split)
    queries = select_queries({q: t for q, t in ds.queries.items() if q in ds.qrels}, max_queries)
    if run_file is not None:
        saved = read_run(run_file)
        check_tune_run(saved, run_file, queries, split)
        run = {q: saved.get(q, {}) for q in queries}
    else:
        hybrid = hybrid or {}
        run = first_stage(retriever, ds.corpus, queries, first_k or k, model=model, index_dir=index_dir,
                          hybrid_weight=hybrid.get("weight", 0.5), hybrid_norm=hybrid.get("norm", "z"))
    run, _ = drop_unknown_docs(top_k(run, k), ds.corpus)
    reranked = rerank_stage(run, ds.corpus, queries, reranker, k, batch_size, mode)
    weight, curve = tune_weight(run, reranked, {q: ds.qrels[q] for q in queries}, k, norm=norm,
                            relevance_level=relevance_level)
    return weight, len(queries), curve


@dataclass
class RerankTask:
    """A reranking experiment's data: ``dataset`` (one split), ``queries`` (its first ``max_queries`` queries,
    sorted ids), ``first`` (their first-stage top ``depth``: ``densekit.retriever.first_stage.first_stage``) and ``k``
    (how many of each query's top candidates a reranker reorders)."""

    dataset: Any
    queries: dict[str, str]
    first: Run
    k: int

    @classmethod
    def load(cls, data: str, split: str, k: int, max_queries: int | None = None, depth: int = 100,
             retriever: str = "dense", model: str | None = None, index_dir: str | None = None,
             judged_only: bool = False) -> "RerankTask":
        """``data`` a dataset name or folder (``data.resolve_dataset``); the dense index is built in, or reused
        from, ``index_dir`` (``first_stage``); ``judged_only``: only queries with qrels are selected."""
        from densekit.retriever.first_stage import first_stage

        from .data import load_dataset, resolve_dataset, select_queries

        ds = load_dataset(resolve_dataset(data), split)
        pool = {q: t for q, t in ds.queries.items() if q in ds.qrels} if judged_only else ds.queries
        queries = select_queries(pool, max_queries)
        first = first_stage(retriever, ds.corpus, queries, depth, model=model, index_dir=index_dir)
        return cls(ds, queries, first, k)

    def row(self, system: str, run: Run, **extra) -> dict:
        """``{"system", "queries", "rerank_top_k", "ndcg@10", "recall@<k>", **extra}`` of ``run`` (metrics rounded
        to 4 digits; recall@k is unchanged by reranking the top k: a check)."""
        _, means = evaluate(run, self.dataset.qrels, ["ndcg@10", f"recall@{self.k}"])
        return {"system": system, "queries": len(self.queries), "rerank_top_k": self.k,
                **{m: round(v, 4) for m, v in means.items()}, **extra}


def first_stage_groups(data: str, split: str = "train", depth: int = 30, retriever: str = "dense",
                       model: str | None = None, index_dir: str | None = None,
                       max_queries: int | None = None) -> list[dict]:
    """Reranker training groups (``densekit.retriever.examples.training_groups``) of ``split``'s first
    ``max_queries`` queries (sorted ids; all by default): their qrels positives, and negatives from the
    ``retriever`` (dense or bm25) top ``depth`` (``first_stage``; the dense index built in, or reused from,
    ``index_dir``)."""
    from densekit.retriever.examples import training_groups
    from densekit.retriever.first_stage import first_stage

    from .data import load_dataset, resolve_dataset, select_queries

    ds = load_dataset(resolve_dataset(data), split)
    queries = select_queries(ds.queries, max_queries)
    run = first_stage(retriever, ds.corpus, queries, depth, model=model, index_dir=index_dir)
    return training_groups(ds.corpus, queries, ds.qrels, run, depth)
