"""What each ``densekit`` subcommand does, as library functions: plain arguments and config objects in (``evaluate``
takes one ``EvalConfig``, the training and mining jobs a ``TrainConfig`` / ``RerankTrainConfig`` / ``MineConfig``),
plain data (what the command prints) out. ``eval/cli.py`` only parses arguments and calls one of these.

Every job checks its output path (``densekit.core.io``) before it loads data or a model, so a refused
output costs nothing. Notes for the user (skipped queries, a tuned fusion weight ...) go to the
``note`` callback (default: ``warnings.warn``). Importing this module imports neither torch nor
transformers nor faiss; each job imports what it needs.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from densekit.retriever.config import DEFAULT_ENCODER, MineConfig, TrainConfig
from densekit.core.io import check_file_target, check_target, check_writable, folder_lock

from .config import EvalConfig
from .data import DataError

Note = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


# ---------------------------------------------------------------- eval

def _saved_run_for(run: dict, path: str, queries: dict, ds, split: str, note: Note) -> dict:
    """The saved run restricted to the evaluated queries; notes count what is left out."""
    shared = sum(1 for qid in queries if qid in run)
    if not shared:
        raise DataError(f"{path}: none of its {len(run)} queries is an evaluated query of {ds.path} split {split!r} "
                        f"(queries with qrels in that split and text in the queries file); check --data and --split")
    outside = len(run) - shared
    if outside:
        note(f"{path}: {outside} run quer{'y' if outside == 1 else 'ies'} skipped (no qrels in split {split!r}, "
             "no text in the queries file, or beyond --max-queries)")
    if shared < len(queries):
        note(f"{len(queries) - shared} evaluated quer{'y is' if len(queries) - shared == 1 else 'ies are'} absent "
             f"from {path} and count 0")
    return {qid: run[qid] for qid in queries if qid in run}


def _finite_or_none(values: dict) -> dict:
    """NaN/inf (an undefined AUC) becomes None: JSON null, ``n/a`` in tables."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


@dataclass
class EvalPlan:
    """What ``check_evaluate`` found, so that ``evaluate`` does not look twice: the dataset folder, the first
    stage, the reranker's class and target (``reranker.base.resolve_spec``, nothing loaded), its mode, and
    the tuning split of ``fuse="auto"``."""

    folder: Path
    retriever: str
    models: list
    reranker: tuple | None = None
    mode: str | None = None
    depth: int = 20
    tune_split: str | None = None


def check_evaluate(config: EvalConfig) -> EvalPlan:
    """Every check of an evaluation that needs no model, in the order a user fixes them: ``EvalConfig``'s own (values
    and flag combinations; run again, for a config changed after it was built), the score cache folder, output paths
    (``io.check_file_target``: exists -> refused without ``overwrite``; not creatable -> refused), the dataset and
    split, the saved run, the reranker spec and mode (``resolve_spec``: no weights read), the tuning split and tuning
    run of ``"auto"`` weights, the dense models and index folder. Raises ValueError / DataError / ModelNotAvailable;
    the CLI prints them as ``densekit: error: ...``."""
    from densekit.core.models import check_available

    from .reranking import check_tune_run, tuning_split
    from .runfile import read_run
    from .data import load_split, resolve_dataset

    if not isinstance(config, EvalConfig):
        raise TypeError(f"an evaluation takes one EvalConfig (densekit.eval.config) holding every setting, got "
                        f"{type(config).__name__}: EvalConfig(data, split, retriever=..., ...)")
    c = replace(config)  # EvalConfig's checks again
    retriever = c.first_stage
    if c.score_cache:
        from densekit.reranker.score_cache import check_cache_folder

        check_cache_folder(c.score_cache)
    models = (c.models or [DEFAULT_ENCODER]) if retriever in ("dense", "hybrid") else [None]
    for path in ([c.save_run + ("" if len(models) == 1 else f".{n}") for n in range(1, len(models) + 1)]
                 if c.save_run else []) + ([c.roc] if c.roc else []):
        check_file_target(path, c.overwrite)
    folder = resolve_dataset(c.data)
    load_split(folder, c.split)  # the split exists and has queries
    if c.run and not Path(c.run).is_file():
        raise DataError(f"--run {c.run}: {'is a folder' if Path(c.run).is_dir() else 'no such file'}; "
                        "give a TREC run file ('qid Q0 docid rank score tag' lines)")
    plan = EvalPlan(folder, retriever, models, depth=c.depth)
    if c.reranker:
        from densekit.reranker.base import resolve_spec

        plan.reranker = resolve_spec(c.reranker)
        modes = tuple(getattr(plan.reranker[0], "modes", ()))
        if len(modes) > 1:
            plan.mode = c.rerank_mode or modes[0]
            if plan.mode not in modes:
                raise ValueError(f"--rerank-mode {plan.mode}: the {plan.reranker[0].kind} reranker has modes "
                                 f"{', '.join(modes)}")
        elif c.rerank_mode:
            raise ValueError(f"--rerank-mode {c.rerank_mode}: the {getattr(plan.reranker[0], 'kind', '?')} reranker "
                             f"has no modes (BlockRank has attention and decode); drop --rerank-mode")
    if c.tuned:
        plan.tune_split = tuning_split(folder, c.split, c.tune_split)
        tune_texts, tune_qrels = load_split(folder, plan.tune_split)
        if c.tune_run:
            check_tune_run(read_run(c.tune_run), c.tune_run, tune_texts, plan.tune_split)
    if retriever in ("dense", "hybrid"):
        for model in models:
            check_available(model)
        check_index_folder(c.index)
    return plan


def check_index_folder(index: str | None) -> None:
    """An ``--index`` folder that is reused when it holds an index and built when absent: refuse (DataError) a
    file there, or a non-empty folder that holds no densekit index (densekit never writes into it)."""
    from densekit.core.io import artefact_kind

    if not index:
        return
    path = Path(index)
    if path.exists() and not path.is_dir():
        raise DataError(f"--index {index}: a file is in the way of the index folder; give a folder")
    if path.is_dir() and any(path.iterdir()) and artefact_kind(path) != "index":
        raise DataError(f"--index {index}: this folder holds no densekit index (and densekit never writes into a "
                        "folder it did not write); give an index folder or a new path")
    if not path.exists():
        check_writable(path)


def evaluate(config: EvalConfig, note: Note = _warn) -> dict[str, dict]:
    """The evaluation ``config`` describes (``EvalConfig``; ``densekit eval`` builds it from its flags): first stage
    (``retriever`` bm25 | dense | hybrid, default bm25, or the saved TREC ``run``), optional rerank (and fusion),
    metrics of every evaluated query. Returns ``{label: {"system": {...}, "metrics": {...}}}``, one entry per system
    (one per dense model): ``system`` holds dataset, split, retriever, run, model, reranker, rerank_mode,
    rerank_top_k, fuse, hybrid and ``identical_ids_relevant``; ``metrics`` the means (None where undefined),
    num_queries and seconds. Every setting is checked first (``EvalConfig`` when built, then ``check_evaluate``),
    before any model loads, so the API refuses what the CLI refuses, with the same message.

    The evaluated queries are the split's queries that have qrels and text (the first ``max_queries`` in
    sorted id order); each mean is over all of them, a query without hits counting 0, which is what
    pytrec_eval gives for a run holding every evaluated query (the beir convention). Unless
    ``keep_identical_ids``, a document whose id equals its query id is dropped (beir's
    ``ignore_identical_ids``); ``identical_ids_relevant`` counts the evaluated queries' qrels rows that judge
    such a document relevant (they count as relevant but can never be retrieved; a note says so when > 0).
    ``save_run`` (a ``.N`` suffix per model when there are several) and ``roc`` (a PNG of every system's ROC
    curve) are replaced only with ``overwrite``. With ``score_cache`` (a folder) the reranker's scores are kept and
    reused there (``reranker.score_cache.ScoreCache``), also by ``fuse="auto"``'s tuning. Notes for the user go to
    ``note``."""
    from densekit.core.runs import drop_unknown_docs
    from densekit.retriever.first_stage import first_stage

    from .data import load_dataset, select_queries
    from .fusion import fuse as fuse_scores
    from .metrics import DEFAULT_METRICS, drop_identical_ids, evaluate
    from .reranking import rerank_stage
    from .runfile import check_trec_id, read_run, write_run

    start = time.perf_counter()
    c = config
    plan = check_evaluate(c)
    retriever, models, depth, mode = plan.retriever, plan.models, plan.depth, plan.mode
    top_k, relevance_level, keep_identical_ids = c.top_k, c.relevance_level, c.keep_identical_ids
    saved_run = read_run(c.run) if c.run else None
    ds = load_dataset(plan.folder, c.split)
    queries = select_queries(ds.queries, c.max_queries)
    if c.save_run:  # refuse ids a TREC file cannot hold before any work
        for qid in queries:
            check_trec_id(qid, "query id")
        for doc in ds.corpus:
            check_trec_id(doc, "doc id")
    if saved_run is not None:
        saved_run = _saved_run_for(saved_run, c.run, queries, ds, c.split, note)
    identical = 0 if keep_identical_ids else sum(
        1 for qid in queries for doc, grade in ds.qrels.get(qid, {}).items() if doc == qid and grade >= relevance_level)
    if identical:
        note(f"{identical} relevant qrels row(s) of the evaluated queries judge a document whose id is the query id; "
             "such documents are dropped from every ranking (beir's ignore_identical_ids), so they count as relevant "
             "but are never retrieved: pass --keep-identical-ids to keep them")
    ranker = None
    if c.reranker:
        from densekit.reranker.base import load_reranker

        ranker = load_reranker(c.reranker)
        if c.score_cache:
            from densekit.reranker.score_cache import ScoreCache

            ranker = ScoreCache(ranker, c.score_cache)
    metric_names = list(dict.fromkeys([*DEFAULT_METRICS, f"recall@{top_k}", f"map@{top_k}"]))
    runs, results = {}, {}
    for model in models:
        t0 = time.perf_counter()
        hybrid = None
        if saved_run is not None:
            system_run, label = saved_run, f"run:{c.run}"
        elif retriever == "hybrid":
            system_run, hybrid = _hybrid(ds, queries, plan.tune_split, model, c, note)
            label = f"hybrid:{model}"
        else:
            system_run = first_stage(retriever, ds.corpus, queries, top_k, model=model, index_dir=c.index,
                                     factory=c.value("factory"), batch_size=c.value("batch_size"),
                                     nprobe=c.nprobe, ef_search=c.ef_search)
            label = retriever if model is None else f"dense:{model}"
        system_run = {qid: system_run.get(qid, {}) for qid in queries}  # every evaluated query, empty when no hits
        fusion = None
        if ranker is not None:
            system_run, missing = drop_unknown_docs(system_run, ds.corpus)
            if missing:
                note(f"rerank: skipped {missing} run doc id(s) absent from the corpus of {ds.path}")
            first = system_run
            system_run = rerank_stage(system_run, ds.corpus, queries, ranker, depth, c.value("rerank_batch_size"), mode)
            system_run = {qid: system_run.get(qid, {}) for qid in queries}
            label += f">{c.reranker}@{depth}" + (f"/{mode}" if mode else "")
            if c.fuse is not None:
                fusion = _fusion(ds, plan.tune_split, c, retriever, model, ranker, mode, note, hybrid)
                system_run = fuse_scores(first, system_run, fusion["weight"], depth, fusion["norm"])
                label += f"+fuse{fusion['weight']}"
        _, means = evaluate(system_run, ds.qrels, metric_names, relevance_level,
                            ignore_identical_ids=not keep_identical_ids, auc_k=top_k)
        runs[label] = drop_identical_ids(system_run) if not keep_identical_ids else system_run
        results[label] = {
            "system": {"dataset": str(ds.path), "split": c.split, "retriever": retriever, "run": c.run, "model": model,
                       "reranker": c.reranker, "rerank_mode": mode, "rerank_top_k": depth if c.reranker else None,
                       "fuse": fusion, "hybrid": hybrid, "identical_ids_relevant": identical},
            "metrics": _finite_or_none({**means, "num_queries": len(queries),
                                        "seconds": round(time.perf_counter() - (start if not results else t0), 3)})}
        if c.save_run:
            suffix = "" if len(models) == 1 else f".{len(results)}"
            write_run(c.save_run + suffix, system_run, tag=label, overwrite=c.overwrite)
            empty = sum(1 for docs in system_run.values() if not docs)
            if empty:  # issue 11 item 10: a TREC file cannot hold a query without hits
                note(f"{empty} evaluated quer{'y has' if empty == 1 else 'ies have'} no hits and no line in "
                     f"{c.save_run + suffix}; densekit counts {'it' if empty == 1 else 'them'} 0 in every mean: "
                     "score the file with `trec_eval -c` (qrels of the evaluated queries) to get the same figures")
    if c.roc:
        from .plots import plot_roc

        plot_roc(runs, ds.qrels, c.roc, k=top_k, relevance_level=relevance_level, overwrite=c.overwrite)
    return results


def _hybrid(ds, queries, tune, model, c: EvalConfig, note: Note) -> tuple[dict, dict]:
    """``(run, setting)``: the hybrid first stage of ``queries`` (``retriever.hybrid``) and
    ``{"weight", "norm", "tuned_on", "tune_queries"}``. With ``hybrid_weight="auto"`` the weight is the best nDCG@10
    of the grid on the tuning split ``tune``'s judged queries (the first ``tune_queries``; only its qrels are read);
    both retrievers run once, over the evaluated and the tuning queries together (one corpus encoding)."""
    from densekit.retriever.hybrid import fuse_runs, hybrid_parts

    from .data import load_split, select_queries
    from .fusion import choose_weight

    def part(run: dict, ids) -> dict:
        return {q: run.get(q, {}) for q in ids}

    norm, top_k = c.value("hybrid_norm"), c.top_k
    weight = None if norm == "rrf" else c.value("hybrid_weight")
    tuning, tune_qrels = {}, {}
    if weight == "auto":
        tune_texts, tune_qrels = load_split(ds.path, tune)
        tuning = select_queries(tune_texts, c.tune_queries)
    lexical, dense = hybrid_parts(ds.corpus, {**tuning, **queries}, top_k, model, c.index, c.value("factory"),
                                  c.value("batch_size"), c.nprobe, c.ef_search)
    curve = None
    if weight == "auto":
        weight, curve = choose_weight(lambda w: fuse_runs(part(lexical, tuning), part(dense, tuning), w, norm, top_k),
                                      {q: tune_qrels[q] for q in tuning}, relevance_level=c.relevance_level)
        note(f"--hybrid-weight auto: W={weight} chosen on split {tune!r} ({len(tuning)} queries)")
    setting = {"weight": weight, "norm": norm, "tuned_on": tune if tuning else None,
               "tune_queries": len(tuning) if tuning else None,
               "curve": [[w, v] for w, v in curve.items()] if curve else None}
    return fuse_runs(part(lexical, queries), part(dense, queries), weight, norm, top_k), setting


def _fusion(ds, tune, c: EvalConfig, retriever, model, ranker, mode, note: Note, hybrid: dict | None = None) -> dict:
    """``{"weight", "norm", "tuned_on", "tune_queries", "curve"}``: the given ``fuse`` weight, or with ``auto`` the
    best weight on the tuning split ``tune``'s first ``tune_queries`` judged queries (the evaluated system's first
    stage there: ``top_k`` documents, the same ``hybrid`` setting; reranked)."""
    from .reranking import tune_fusion

    norm = c.value("fuse_norm")
    if c.fuse != "auto":
        return {"weight": c.fuse, "norm": norm, "tuned_on": None, "tune_queries": None, "curve": None}
    weight, tuned, curve = tune_fusion(ds.path, tune, ranker, c.depth, norm, c.fuse_tune_queries, retriever=retriever,
                                       model=model, index_dir=c.index, run_file=c.tune_run, mode=mode,
                                       batch_size=c.value("rerank_batch_size"), relevance_level=c.relevance_level,
                                       first_k=c.top_k, hybrid=hybrid)
    note(f"--fuse auto: W={weight} chosen on split {tune!r} ({tuned} queries)")
    return {"weight": weight, "norm": norm, "tuned_on": tune, "tune_queries": tuned,
            "curve": [[w, v] for w, v in curve.items()]}


# ---------------------------------------------------------------- compare

def compare(runs: list[str], data: str, split: str = "test", metrics: list[str] = ("ndcg@10",), baseline: str | None = None,
            permutations: int = 10000, seed: int = 0, max_queries: int | None = None, relevance_level: int = 1,
            keep_identical_ids: bool = False, json_path: str | None = None, plot: str | None = None,
            overwrite: bool = False) -> dict:
    """``report.compare`` of the TREC ``runs`` (``NAME=FILE`` names a system) on the evaluated queries of
    ``data``/``split`` (as ``evaluate``); also written as JSON to ``json_path`` and drawn to ``plot`` (both
    checked before any work, replaced only with ``overwrite``). Returns the comparison."""
    from . import report
    from .data import load_dataset, resolve_dataset, select_queries

    for path in (json_path, plot):
        if path:
            check_file_target(path, overwrite)
    ds = load_dataset(resolve_dataset(data), split)
    result = report.compare(report.read_runs(runs), ds.qrels, list(metrics), baseline,
                            select_queries(ds.queries, max_queries), permutations, seed,
                            relevance_level, not keep_identical_ids)
    if json_path:
        report.write_json(result, json_path, overwrite)
    if plot:
        from .plots import plot_differences

        plot_differences(result, plot, overwrite=overwrite)
    return result


# ---------------------------------------------------------------- index build / merge, search

def launcher_shards() -> tuple[int, int] | None:
    """(world size, rank) when launched by torchrun / accelerate launch with more than one process."""
    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world and rank and world.isdigit() and rank.isdigit() and int(world) > 1:
        return int(world), int(rank)
    return None


def build_index(data: str, model: str, out: str, factory: str = "Flat", batch_size: int = 64, shard_size: int = 4096,
                num_shards: int | None = None, shard_index: int | None = None, device: str | None = None,
                arrow: bool = False, train_sample: int = 100_000, add_batch: int = 65536, on_disk: bool = False,
                overwrite: bool = False) -> dict:
    """Encode the corpus of ``data`` with ``model`` into the index folder ``out`` (``search.build_index``).
    Without ``num_shards``: one shard per torchrun/accelerate process (rank 0 merges), else everything here.
    With ``num_shards``: encode shard ``shard_index`` only (merged later by ``merge_index``). Returns
    ``{"index", "ntotal", "dim", "factory"}`` when this process built the index, else
    ``{"shard", "shard_index", "num_shards"}``.

    One build at a time per ``out`` (``io.folder_lock``, before loading anything): the process that merges
    holds the lock of ``out``, and with several shards each process also holds its shard's lock, so the
    ranks of one build run side by side while a second build of the same ``out`` (or shard) is refused."""
    from contextlib import ExitStack

    from densekit.retriever.encoder import DualEncoder
    from densekit.core.device import inference_device
    from densekit.core.models import check_available
    from densekit.retriever.search import build_index as build
    from densekit.retriever.shards import shard_name

    from .data import load_corpus_of

    check_target(out, "index", overwrite)  # the output-path rule, before loading anything
    inference_device(device)  # a device this machine lacks: refused before anything loads
    check_available(model)
    launched = launcher_shards() if num_shards is None else None
    num_shards, shard_index = launched or (num_shards or 1, shard_index or 0)
    merge = num_shards == 1 or (launched is not None and shard_index == 0)  # torchrun: rank 0 merges
    with ExitStack() as locks:
        if merge:
            locks.enter_context(folder_lock(out))
        if num_shards > 1:
            locks.enter_context(folder_lock(out, shard_name(shard_index, num_shards)))
        corpus = load_corpus_of(data, arrow=arrow)
        encoder = DualEncoder.from_pretrained(model, device=device)
        result = build(corpus, encoder, out, factory, batch_size, shard_size, overwrite=overwrite, num_shards=num_shards,
                       shard_index=shard_index, merge=merge, train_sample=train_sample, add_batch=add_batch,
                       on_disk=on_disk)
    if not merge:
        return {"shard": str(result), "shard_index": shard_index, "num_shards": num_shards}
    return {"index": out, "ntotal": result.ntotal, "dim": result.dim, "factory": result.factory}


def merge_index(out: str, shards: list[str] | None = None, factory: str = "Flat", train_sample: int = 100_000,
                add_batch: int = 65536, on_disk: bool = False, overwrite: bool = False) -> dict:
    """Build the index ``out`` from encoded shards (default ``<out>.partial``, deleted after the merge; given
    folders never are). Returns ``{"index", "ntotal", "dim", "factory"}``. Holds the lock of ``out``
    (``io.folder_lock``) throughout: a build or merge of the same ``out`` running elsewhere is refused."""
    import shutil

    from densekit.retriever.shards import merge_shards

    check_target(out, "index", overwrite)
    work = Path(out).with_name(Path(out).name + ".partial")
    with folder_lock(out):
        index = merge_shards(shards or [work], out, factory, train_sample, add_batch, overwrite, on_disk=on_disk)
        if shards is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"index": out, "ntotal": index.ntotal, "dim": index.dim, "factory": index.factory}


def search(index_dir: str, queries: list[str], model: str | None = None, k: int = 10, nprobe: int | None = None,
           ef_search: int | None = None) -> list[dict]:
    """The top ``k`` of each query text in a saved index, searched with ``model`` (default: the index's own
    encoder; checked against the index). Returns ``[{"query", "hits": [{"id", "score"}]}]``, one per query."""
    from densekit.retriever.encoder import DualEncoder
    from densekit.retriever.index import Index
    from densekit.retriever.search import check_encoder

    index = Index.load(index_dir)
    encoder = DualEncoder.from_pretrained(model or index.meta["model"])
    check_encoder(index, encoder, index_dir)  # content hash: also with a model, also a model retrained in place
    index.set_params(nprobe=nprobe, ef_search=ef_search)
    ids, scores = index.search(encoder.encode(queries, is_query=True), k)
    return [{"query": q, "hits": [{"id": d, "score": float(s)} for d, s in zip(doc_ids, row)]}
            for q, doc_ids, row in zip(queries, ids, scores)]


# ---------------------------------------------------------------- training, mining

def train_retriever(data: str | list[str], out: str, config: TrainConfig, model: str = DEFAULT_ENCODER,
                    split: str | list[str] = "train", train_file: str | list[str] | None = None, triples: str | None = None,
                    unsupervised: bool = False, resume: bool = False, overwrite: bool = False,
                    mix: str = "proportional") -> dict:
    """Train a dual encoder into ``out`` on the JSONL ``train_file`` (query, positives and negatives as doc ids of
    ``data``'s corpus), the TSV ``triples`` (texts), ``unsupervised`` crop pairs of the corpus (no negatives), else
    the qrels of ``split``. Several datasets (``data`` a list; ``split`` one for all or one per dataset; ``train_file``
    none or one per dataset, its ids read against that dataset's corpus) train one encoder on their mixture
    (``retriever.examples.mix_sources``: ``mix`` proportional or even, as ``train_reranker``); triples and crop pairs
    take one dataset. The run folder and every source's split are checked before any training file is read. A
    distillation loss (``margin-mse``, ``kl``) needs train files with teacher scores on every line
    (``examples.read_jsonl_examples``): anything else is refused before the model loads. Returns ``{"model",
    "examples", "loss", "sources"}``."""
    import random

    from densekit.retriever import examples as ex
    from densekit.core.checkpoints import check_run_folder
    from densekit.retriever.config import DISTILL_LOSSES
    from densekit.retriever.encoder import DualEncoder
    from densekit.retriever.train import train

    from .data import load_dataset, load_queries, load_split, resolve_dataset

    distill = config.loss in DISTILL_LOSSES
    if distill and not train_file:
        raise ValueError(f"--loss {config.loss} distils teacher scores, which only a --train-file carries "
                         "('positive_scores' / 'negative_scores' on each line)")
    sources = training_sources(data, split)
    files = [train_file] if isinstance(train_file, str) else list(train_file or [])
    if files and len(files) != len(sources):
        raise ValueError(f"{len(files)} --train-file for {len(sources)} --data: give one training file per dataset, "
                         "in the same order (each file's ids are read against its dataset's corpus)")
    if len(sources) > 1 and (triples or unsupervised):
        raise ValueError(f"--{'triples' if triples else 'unsupervised'} trains on one dataset; a mixture of "
                         f"{len(sources)} datasets trains on their qrels or on one --train-file each")
    check_run_folder(out, resume, overwrite)  # before any data is loaded
    folders = [resolve_dataset(name) for name, _ in sources]
    if unsupervised:
        from .data import load_corpus_of

        examples = ex.crop_pairs(load_corpus_of(folders[0]), random.Random(config.seed))
        config = replace(config, n_negatives=0)
    elif triples:
        examples = ex.read_triples(triples)
    else:
        for folder, (_, part) in zip(folders, sources):
            load_split(folder, part)  # every source's split exists, before any file is read
        parts = []
        for i, (folder, (_, part)) in enumerate(zip(folders, sources)):
            ds = load_dataset(folder, part)
            if files:
                queries = load_queries(folder / "queries.jsonl") if (folder / "queries.jsonl").exists() else ds.queries
                parts.append(ex.read_jsonl_examples(files[i], ds.corpus, queries, config.n_negatives))
            else:
                parts.append(ex.from_qrels(ds.corpus, ds.queries, ds.qrels, n_negatives=config.n_negatives))
        examples = ex.mix_sources(parts, mix, config.seed)
    if distill:
        ex.require_teacher_scores(examples, config.loss)  # before the model loads
    encoder = DualEncoder.from_pretrained(model)
    train(encoder, examples, out, config, resume=resume, overwrite=overwrite)
    return {"model": str(Path(out) / "model"), "examples": len(examples), "loss": config.loss,
            "sources": [f"{name}:{part}" for name, part in sources]}


def train_reranker(data: str | list[str], out: str, config, scorer, model: str = "HuggingFaceTB/SmolLM2-135M-Instruct",
                   split: str | list[str] = "train", first_stage: str = "dense", retriever_model: str | None = None,
                   index: str | None = None, depth: int = 30, max_queries: int | None = None, resume: bool = False,
                   overwrite: bool = False, eval_split: str | None = None, eval_every: int | None = None,
                   eval_queries: int = 50, eval_k: int = 20, options=None, mix: str = "proportional") -> dict:
    """Train a reranker into ``out``: ``config`` a ``RerankTrainConfig``, ``scorer`` the reranker's config, which
    picks its kind (``reranker/kinds.py``: the kind whose ``config`` it is, e.g. ``RerankerConfig`` pointwise yes/no,
    ``QLMConfig`` query likelihood, ``BlockRankConfig`` BlockRank, ``CrossEncoderConfig`` cross-encoder) on base
    ``model``; ``options`` the kind's own training options (its ``train_options``, e.g. ``BlockRankTrainOptions``). Training groups: the judged
    queries of ``split`` (the first ``max_queries``), their positives, and negatives from the ``first_stage``
    (dense or bm25) top ``depth``. Several datasets (``data`` a list; ``split`` one for all or one per dataset) train
    one reranker on their mixture (``retriever.examples.mix_sources``: ``mix`` proportional or even); a dense
    ``index`` folder serves one corpus, so a mixture takes none. With ``eval_split`` and ``eval_every``, the nDCG@10 of the reranked
    first-stage top ``eval_k`` of that split's first ``eval_queries`` judged queries is logged every
    ``eval_every`` steps (``eval_ndcg@10`` in ``train_log.jsonl``; never the training split; of the first dataset).
    The run folder is checked before any data is loaded. Returns ``{"model", "groups", "objective", "kind", "sources"}``."""
    from densekit.reranker import kinds
    from densekit.reranker.base import check_target
    from densekit.reranker.train import train_reranker as train, training_options
    from densekit.core.checkpoints import check_run_folder

    from densekit.eval.reranking import RerankTask, first_stage_groups, rerank_metric

    kind = kinds.by_config(scorer)
    if kind is None:
        raise TypeError(f"scorer must be one of {[k.config.__name__ for k in kinds.kinds().values() if k.config]}, "
                        f"got {type(scorer).__name__}")
    cls = kind.load_class()
    training_options(cls, config, options)  # the objective and the kind's options, before anything loads
    sources = training_sources(data, split)
    if len(sources) > 1 and index is not None:
        raise ValueError("--index holds one corpus's vectors: a mixture of datasets builds each dense first stage in "
                         "memory (drop --index) or uses --first-stage bm25")
    data, split = sources[0]
    if eval_split is not None and eval_split == split:
        raise ValueError(f"--eval-split {eval_split!r} is the training split: watch a split the model does not train on")
    if eval_every and eval_split is None:
        raise ValueError("--eval-every needs --eval-split NAME (a split with qrels the model does not train on)")
    check_run_folder(out, resume, overwrite)  # before any data is loaded or encoded
    check_target(cls, model)  # e.g. a dual-encoder folder: refused before the first stage runs
    from .data import load_split, resolve_dataset

    if eval_split is not None:
        load_split(resolve_dataset(data), eval_split)  # it exists and has judged queries, before any encoding
    for name, part in sources:
        load_split(resolve_dataset(name), part)  # every source's split exists, before any encoding
    if first_stage == "dense":
        check_index_folder(index)
    if getattr(config, "lower_cache_dir", None):
        check_writable(Path(config.lower_cache_dir) / "states")  # a file in the folder's place, or no write access
    from densekit.retriever.examples import mix_sources

    examples = mix_sources([first_stage_groups(name, part, depth, first_stage, retriever_model, index, max_queries)
                            for name, part in sources], mix, config.seed)
    evaluate = None
    if eval_every:
        task = RerankTask.load(data, eval_split, eval_k, eval_queries, eval_k, first_stage, retriever_model, index,
                               judged_only=True)
        evaluate = rerank_metric(task.first, task.dataset.corpus, task.queries, task.dataset.qrels, eval_k)
    reranker = cls.from_pretrained(model, scorer)
    train(reranker, examples, out, config, resume=resume, overwrite=overwrite, evaluate=evaluate, evaluate_every=eval_every,
          options=options)
    return {"model": str(Path(out) / "model"), "groups": len(examples),
            "objective": config.objective or reranker.objectives[0], "kind": reranker.kind,
            "sources": [f"{name}:{part}" for name, part in sources]}


def training_sources(data: str | list[str], split: str | list[str]) -> list[tuple[str, str]]:
    """``[(dataset, split)]`` of a training run: one split for every dataset, or one split per dataset."""
    names = [data] if isinstance(data, str) else list(data)
    splits = [split] if isinstance(split, str) else list(split)
    if not names:
        raise ValueError("no training dataset given")
    if len(splits) not in (1, len(names)):
        raise ValueError(f"{len(splits)} splits for {len(names)} datasets: give one --split for all, or one per --data")
    pairs = list(zip(names, splits * len(names) if len(splits) == 1 else splits))
    if len(set(pairs)) < len(pairs):
        raise ValueError(f"a dataset and split named twice in {', '.join(f'{n}:{s}' for n, s in pairs)}")
    return pairs


def mine(data: str, out: str, config: MineConfig, split: str = "train", index: str | None = None,
         model: str | None = None, overwrite: bool = False, retriever: str | None = None,
         hybrid_weight: float | None = None, hybrid_norm: str | None = None, teacher: str | None = None,
         denoise: bool = False, teacher_cache: str | None = None, teacher_batch_size: int = 8) -> dict:
    """Mine hard negatives of the judged queries of ``split`` (``densekit.retriever.mining.mine_negatives``: the dense
    ``index``, BM25, or ``retriever="hybrid"`` with the index) into the JSONL training file ``out`` (checked before any
    work). With ``teacher`` (a reranker spec, ``reranker.base.resolve_spec``: checked before any work), every mined
    document gets the teacher's score (``reranker.teacher.teacher_scores``, written as ``positive_scores`` /
    ``negative_scores``: the distillation losses' input), cached per query group in ``teacher_cache`` when given (a
    rerun resumes); ``denoise`` then drops the negatives the teacher scores above every positive. Returns ``{"out",
    "queries", "negatives"}`` (+ ``"teacher"``, ``"denoised"``: the count dropped)."""
    from densekit.core.io import write_jsonl
    from densekit.retriever.mining import mine_negatives, mined_rows

    from .data import load_dataset, resolve_dataset

    check_file_target(out, overwrite)  # the output-path rule, before any work
    if denoise and not teacher:
        raise ValueError("--denoise drops the negatives a teacher scores above the positives: give --teacher SPEC")
    if teacher_cache and not teacher:
        raise ValueError("--teacher-cache keeps a teacher's scores: give --teacher SPEC")
    if teacher:
        from densekit.reranker.base import resolve_spec

        resolve_spec(teacher)  # an unknown kind or a model no reranker is built from: refused before any work
        if teacher_cache:
            from densekit.reranker.score_cache import check_cache_folder

            check_cache_folder(teacher_cache, "--teacher-cache")
    ds = load_dataset(resolve_dataset(data), split)
    norm = hybrid_norm or "z"
    negatives = mine_negatives(ds.corpus, ds.queries, ds.qrels, config, index, model, retriever=retriever,
                               hybrid_weight=None if norm == "rrf" else (0.5 if hybrid_weight is None else hybrid_weight),
                               hybrid_norm=norm)
    rows = mined_rows(ds.queries, ds.qrels, negatives, config.relevance_level)
    result = {}
    if teacher:
        from densekit.reranker.base import load_reranker
        from densekit.reranker.teacher import denoise as drop_false_negatives, teacher_scores

        reranker = load_reranker(teacher)
        if teacher_cache:
            from densekit.reranker.score_cache import ScoreCache

            reranker = ScoreCache(reranker, teacher_cache)
        rows = teacher_scores(reranker, rows, ds.corpus, batch_size=teacher_batch_size)
        result["teacher"] = teacher
        if denoise:
            rows, result["denoised"] = drop_false_negatives(rows)
    write_jsonl(out, rows, overwrite)
    return {"out": out, "queries": len(rows), "negatives": sum(len(r["negatives"]) for r in rows), **result}
