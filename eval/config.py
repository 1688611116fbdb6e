"""The evaluation's configuration dataclass, importable without torch: ``densekit eval``'s flags are generated from it
(``eval/args.py``) and ``densekit.eval.jobs.evaluate`` takes it. Each field's help and constraints are data
(``densekit.core.settings``)."""
from __future__ import annotations

from dataclasses import MISSING, dataclass

from densekit.core.settings import AT_LEAST_ONE, FRACTION, check_fields, flag, setting
from densekit.reranker import kinds as reranker_kinds
from densekit.retriever.config import DEFAULT_ENCODER

AUTO = ("auto",)  # a weight chosen on a tuning split
# What a field left unset (None: "not given", so that a flag the run would ignore can be refused) stands for. The
# fields' help texts say the same ("default: ..."; a test holds them together); read through ``EvalConfig.value``.
UNSET = {"factory": "Flat", "batch_size": 64, "hybrid_weight": 0.5, "hybrid_norm": "z", "rerank_top_k": 20,
         "rerank_batch_size": 8, "fuse_norm": "z"}


@dataclass
class EvalConfig:
    """Every setting of one evaluation (``densekit.eval.jobs.evaluate``; ``densekit eval``, one flag per field): a
    first stage (``retriever`` bm25 | dense | hybrid, or a saved TREC ``run``), an optional reranker and fusion, the
    metrics' settings and the outputs. Building one refuses what ``densekit eval`` refuses without reading a file:
    values outside their constraints (``check_fields``) and settings that would be ignored or contradict each other,
    each a ValueError whose message is the one the command prints (for a value outside ``choices`` the command line
    prints argparse's own words). Files, the dataset, the reranker spec and the models are checked by
    ``jobs.check_evaluate``, before any model loads. None means "not given": the help says the default used."""

    data: str = setting(MISSING, "BEIR folder, or a dataset name under $DENSEKIT_DATA")
    split: str = setting("test", "the split evaluated: its queries that have qrels")
    retriever: str | None = setting(None, "first stage (default: bm25; not with --run); hybrid = BM25 + dense fused "
                                    "per query", choices=("bm25", "dense", "hybrid"))
    hybrid_weight: float | str | None = setting(None, "hybrid: (1-W)*norm(bm25) + W*norm(dense) per query (default: "
                                                "0.5); 'auto' picks W on a tuning split (never the evaluated one)",
                                                words=AUTO, metavar="W|auto", **FRACTION)
    hybrid_norm: str | None = setting(None, "hybrid: per-query normalisation, or rrf = reciprocal-rank fusion, k=60, no "
                                      "weight (default: z)", choices=("z", "minmax", "rrf"))
    run: str | None = setting(None, "score (and with --reranker, rerank) this saved TREC run file instead of running "
                              "a first stage", metavar="FILE")
    models: list[str] | None = setting(None, "dense encoder(s) (names or folders); several models are evaluated side "
                                       f"by side (default: {DEFAULT_ENCODER})", flag="--model", metavar="MODEL")
    index: str | None = setting(None, "dense, one model: reuse this index folder (built there when absent)")
    factory: str | None = setting(None, "dense: FAISS factory string when building an index (default: Flat)")
    nprobe: int | None = setting(None, "dense: IVF lists searched per query (FAISS default 1)", **AT_LEAST_ONE)
    ef_search: int | None = setting(None, "dense: HNSW efSearch", **AT_LEAST_ONE)
    batch_size: int | None = setting(None, "dense: encoding batch size (default: 64)", **AT_LEAST_ONE)
    top_k: int = setting(100, "first-stage depth; also the cut-off of recall, map and auc", **AT_LEAST_ONE)
    max_queries: int | None = setting(None, "only the first N queries of the split (sorted ids)", **AT_LEAST_ONE)
    relevance_level: int = setting(1, "min grade counted relevant by binary measures (>= 1, as pytrec_eval)",
                                   **AT_LEAST_ONE)
    keep_identical_ids: bool = setting(False, "do not drop docs whose id equals the query id")
    save_run: str | None = setting(None, "write the (final) run as a TREC run file")
    overwrite: bool = setting(False, "replace an existing --save-run file (refused without it)")
    reranker: str | None = setting(None, "rerank with a trained reranker folder, a causal LM name (zero-shot pointwise "
                                   "prompt) or <kind>:<folder or model>")
    rerank_mode: str | None = setting(None, "the reranker kind's scoring mode (BlockRank: attention mass, its default, "
                                      "or decode: the decoded answer first)", choices=reranker_kinds.all_modes)
    rerank_top_k: int | None = setting(None, "documents reranked per query (default: 20)", **AT_LEAST_ONE)
    rerank_batch_size: int | None = setting(None, "reranker batch size (default: 8)", **AT_LEAST_ONE)
    score_cache: str | None = setting(None, "keep the reranker's scores on disk here and reuse them (per reranker and "
                                      "prompt): an interrupted run resumes, and the same reranker fused or not scores "
                                      "once", metavar="DIR")
    fuse: float | str | None = setting(None, "fuse first-stage and reranker scores per query: (1-W)*norm(first) + "
                                       "W*norm(rerank); 'auto' picks W on a tuning split (never the evaluated one)",
                                       words=AUTO, metavar="W|auto", **FRACTION)
    fuse_norm: str | None = setting(None, "per-query normalisation for --fuse (default: z)", choices=("z", "minmax"))
    tune_split: str | None = setting(None, "--fuse auto / --hybrid-weight auto: the split whose qrels choose W "
                                     "(default: dl20 for dl19 and back, else dev, else train)")
    tune_run: str | None = setting(None, "--fuse auto with --run: the saved first-stage run of the tuning split",
                                   metavar="FILE")
    tune_queries: int | None = setting(None, "--fuse auto / --hybrid-weight auto: first N judged tuning queries, "
                                       "sorted ids (default: 100 for --fuse, all for --hybrid-weight)", **AT_LEAST_ONE)
    roc: str | None = setting(None, "draw the ROC curves (top-k candidates) of every evaluated system into this PNG")

    def __post_init__(self):
        check_fields(self)
        if isinstance(self.models, str):
            raise ValueError(f"--model takes a list of models: models=[{self.models!r}]")
        if self.run and self.retriever:
            raise ValueError("--run scores a saved run; it replaces the first stage: drop --retriever (or --run)")
        retriever = self.first_stage
        if retriever not in ("dense", "hybrid"):
            self._refuse_ignored(("models", "index", "factory", "nprobe", "ef_search", "batch_size"),
                                 "with --run (it replaces the first stage)" if retriever == "run" else
                                 "with --retriever bm25 (dense-only flags; add --retriever dense or hybrid)")
        if retriever != "hybrid":
            self._refuse_ignored(("hybrid_weight", "hybrid_norm"), f"with --retriever {retriever} (they serve "
                                 "--retriever hybrid)")
        elif self.hybrid_norm == "rrf" and self.hybrid_weight is not None:
            raise ValueError("--hybrid-norm rrf (reciprocal-rank fusion) has no weight: drop --hybrid-weight")
        if self.index and self.models and len(self.models) > 1:
            raise ValueError("--index serves one model; drop it to compare several models")
        if self.nprobe is not None and self.ef_search is not None:
            raise ValueError("--nprobe applies to IVF indexes and --ef-search to HNSW indexes: give one of them")
        if not self.reranker:
            self._refuse_ignored(("rerank_mode", "rerank_top_k", "rerank_batch_size", "fuse", "score_cache"),
                                 "without --reranker")
        if self.fuse is None:
            self._refuse_ignored(("fuse_norm",), "without --fuse")
        if not self.tuned:
            self._refuse_ignored(("tune_split", "tune_run", "tune_queries"), "without --fuse auto or --hybrid-weight "
                                 "auto (they choose a weight on a tuning split)")
        if self.tune_run and self.fuse != "auto":
            raise ValueError("--tune-run is the saved first-stage run of the tuning split, for --fuse auto with --run: "
                             "drop --tune-run")
        if self.fuse == "auto" and self.tune_run and not self.run:
            raise ValueError("--tune-run is the saved first-stage run of the tuning split, for --fuse auto with --run; "
                             "without --run the first stage runs on the tuning split itself: drop --tune-run")
        if self.fuse == "auto" and self.run and not self.tune_run:
            raise ValueError("--fuse auto with --run needs --tune-run FILE: the saved first-stage run of the tuning "
                             "split")
        if self.reranker and retriever != "run" and self.depth > self.top_k:
            raise ValueError(f"--rerank-top-k {self.depth} is beyond --top-k {self.top_k}: the first stage returns "
                             f"{self.top_k} candidates per query; raise --top-k to at least {self.depth} or lower "
                             "--rerank-top-k")

    @property
    def first_stage(self) -> str:
        """``retriever``, else ``"run"`` with a saved run, else ``"bm25"``."""
        return self.retriever or ("run" if self.run else "bm25")

    def value(self, name: str):
        """Field ``name``'s value, or what it stands for when unset (``UNSET``)."""
        given = getattr(self, name)
        return UNSET[name] if given is None else given

    @property
    def depth(self) -> int:
        """Documents reranked per query: ``rerank_top_k``, else 20."""
        return self.value("rerank_top_k")

    @property
    def fuse_tune_queries(self) -> int:
        """Judged tuning queries ``--fuse auto`` reads: ``tune_queries``, else 100 (``--hybrid-weight auto``: all)."""
        return self.tune_queries or 100

    @property
    def tuned(self) -> bool:
        """Whether a weight is chosen on a tuning split (``fuse`` or ``hybrid_weight`` is ``"auto"``)."""
        return "auto" in (self.fuse, self.hybrid_weight)

    def _refuse_ignored(self, names: tuple[str, ...], reason: str) -> None:
        """ValueError naming the flags of the fields ``names`` that are set though ``reason`` ignores them."""
        given = [flag(EvalConfig, name) for name in names if getattr(self, name) not in (None, False)]
        if given:
            one = len(given) == 1
            raise ValueError(f"{', '.join(given)} {'is' if one else 'are'} ignored {reason}: drop "
                             f"{'it' if one else 'them'}")
