"""``densekit`` command line: argument parsing, then one ``densekit.eval.jobs`` call per subcommand.

The eval, training and mining flags are generated from the config dataclasses (``CONFIGS``, ``eval/args.py``);
the other flags (the training and mining data, outputs, first stage ...) are written here once each. Building the
parser imports no torch, transformers or faiss, so ``--help`` is fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields

from densekit.retriever.config import DISTILL_LOSSES, MineConfig, TrainConfig
from densekit.core import device
from densekit.core.models import ModelNotAvailable
from densekit.reranker import kinds as reranker_kinds
from densekit.reranker.config import RerankTrainConfig

from . import jobs
from .args import add_config_args, config_from_args, float_in, non_negative_int, positive_int, unit_float
from .config import EvalConfig
from .data import DataError

DEFAULT_ENCODER = jobs.DEFAULT_ENCODER



def _kind_settings() -> dict[str, dict[str, object]]:
    """Every field of a trainable reranker kind's scoring config or training options: ``{field: {kind: default}}``."""
    from .args import field_default

    found: dict[str, dict[str, object]] = {}
    for name in reranker_kinds.trainable():
        kind = reranker_kinds.get(name)
        for cls in (kind.config, kind.train_options):
            for f in fields(cls) if cls is not None else ():
                found.setdefault(f.name, {})[name] = field_default(f)
    return found


def _kind_overrides() -> dict[str, dict]:
    """``train reranker``'s flags that depend on ``--kind``: every kind setting defaults to None (the chosen kind's
    own default applies, and a flag of another kind is refused), the objective's choices are every kind's, and a
    shared training setting a kind defaults differently (``train_defaults``) defers to the kind."""
    from .args import field_default

    helps = {f.name: f.metadata.get("help", "") for k in reranker_kinds.trainable() for cls in
             (reranker_kinds.get(k).config, reranker_kinds.get(k).train_options) if cls for f in fields(cls)}
    def shown(value) -> str:
        text = repr(value) if isinstance(value, str) else str(value)
        return (text if len(text) <= 32 else text[:29] + "...").replace("%", "%%")

    out = {name: {"default": None, "help": f"{helps[name].replace('%', '%%')} (default per kind: "
                  f"{'; '.join(f'{k} {shown(d)}' for k, d in by_kind.items())})"}
           for name, by_kind in _kind_settings().items()}
    out["objective"] = {"choices": tuple(dict.fromkeys(o for k in reranker_kinds.trainable()
                                                       for o in reranker_kinds.get(k).objectives))}
    base = {f.name: (f, field_default(f)) for f in fields(RerankTrainConfig)}
    for name in reranker_kinds.trainable():
        for key, value in reranker_kinds.get(name).train_defaults.items():
            f, default = base[key]
            out.setdefault(key, {"default": None, "help": f"{f.metadata.get('help', '')} (default: {default}"})
            out[key]["help"] += f"; {name}: {value}"
    for key in {k for kind in reranker_kinds.trainable() for k in reranker_kinds.get(kind).train_defaults}:
        out[key]["help"] += ")"
    return out


# The config dataclasses behind each subcommand's flags: every field is a flag (generated, ``args.add_config_args``)
# except those in NOT_FLAGS; tests/test_cli_configs.py holds the parser to this. ``train reranker`` takes every
# trainable kind's scoring config and training options (``reranker/kinds.py``), read when the parser is built.
CONFIGS = {
    ("eval",): (EvalConfig,),
    ("train", "retriever"): (TrainConfig,),
    ("train", "reranker"): (RerankTrainConfig,),
    ("mine",): (MineConfig,),
}

# Every flag naming a place densekit writes, by subcommand, and what it writes there. One output rule holds for all
# (densekit.core.io): something that exists and is not densekit's own output of that kind is refused, densekit's
# own is replaced only with --overwrite, and the check runs before any model loads; tests/test_output_rule.py walks
# every subcommand's flags and holds the parser to this table.
OUTPUTS = {
    ("eval",): {"save_run": "file", "roc": "file", "index": "index", "score_cache": "cache"},
    ("compare",): {"json": "file", "plot": "file"},
    ("data", "download"): {"out": "dataset folder's parent"},
    ("index", "build"): {"out": "index"},
    ("index", "merge"): {"out": "index"},
    ("train", "retriever"): {"out": "train-run"},
    ("train", "reranker"): {"out": "train-run", "index": "index", "lower_cache_dir": "cache"},
    ("mine",): {"out": "file", "teacher_cache": "cache"},
    ("benchmark",): {"out": "benchmark", "indexes": "index folders' parent"},
}

# Config fields a subcommand deliberately offers no flag for, and why.
NOT_FLAGS = {
}

# Where a subcommand's flag differs from its field's generated one (argparse keywords), and why.
OVERRIDES = {
    ("train", "retriever"): {  # the natural count depends on the data source
        "n_negatives": {"default": None, "help": "hard negatives per query (default 1 with a negatives file or "
                        "triples, else 0)"},
        # None when not given, so that check_args can refuse it with another loss
        "teacher_temperature": {"default": None, "help": "kl: the teacher's score temperature tau_t (its softmax of "
                                "t / tau_t; default 1.0)"}},
}


def configs(command: tuple[str, ...]) -> tuple[type, ...]:
    """``CONFIGS[command]``, plus, for ``train reranker``, every trainable kind's config and options."""
    found = list(CONFIGS[command])
    if command == ("train", "reranker"):
        for name in reranker_kinds.trainable():
            kind = reranker_kinds.get(name)
            found += [c for c in (kind.config, kind.train_options) if c is not None and c not in found]
    return tuple(found)


def overrides(command: tuple[str, ...]) -> dict[str, dict]:
    """``OVERRIDES[command]``, plus what depends on the reranker kinds registered when the parser is built: for
    ``train reranker`` the flags that depend on ``--kind``, for ``eval`` the kinds ``--reranker`` names."""
    found = {**OVERRIDES.get(command, {}), **(_kind_overrides() if command == ("train", "reranker") else {})}
    if command == ("eval",):
        text = next(f.metadata["help"] for f in fields(EvalConfig) if f.name == "reranker")
        found["reranker"] = {"help": f"{text}, kinds: {', '.join(reranker_kinds.kinds())}"}
    return found


def _config_args(parser, command: tuple[str, ...]) -> None:
    """The generated flags of ``command``'s configs; a field two configs share is one flag."""
    seen = set(NOT_FLAGS.get(command, ()))
    for cls in configs(command):
        seen.update(add_config_args(parser, cls, skip=seen, overrides=overrides(command),
                                    title=f"{cls.__name__} (library: {cls.__module__})"))


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="retrieve (and optionally rerank) a BEIR split and print metrics")
    _config_args(p, ("eval",))
    p.add_argument("--json", action="store_true", help="print one JSON object per system instead of a table")


def metric_name(text: str) -> str:
    """A metric like ``ndcg@10`` (argparse type: exit 2 on an unknown one)."""
    from .metrics import parse_metric

    try:
        parse_metric(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text.lower()


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare saved runs on one qrels: metrics, paired t-test and randomisation "
                       "test vs a baseline (Holm-corrected), win/tie/loss")
    p.add_argument("runs", nargs="+", metavar="RUN", help="TREC run files, NAME=FILE to name a system (default: the file name)")
    p.add_argument("--data", required=True, help="BEIR folder, or a dataset name under $DENSEKIT_DATA")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", nargs="+", type=metric_name, default=["ndcg@10", "mrr@10", "recall@100"])
    p.add_argument("--baseline", metavar="NAME", help="the system the others are tested against (default: the first run)")
    p.add_argument("--permutations", type=positive_int, default=10000, help="sign flips of the randomisation test")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the randomisation test")
    p.add_argument("--alpha", type=float_in(0.0, 1.0, True, "a level in (0, 1]"), default=0.05,
                   help="significance level of the table's marks")
    p.add_argument("--max-queries", type=positive_int, help="only the first N queries of the split (sorted ids)")
    p.add_argument("--relevance-level", type=positive_int, default=1, help="min grade counted relevant by binary measures")
    p.add_argument("--keep-identical-ids", action="store_true", help="do not drop docs whose id equals the query id")
    p.add_argument("--json", metavar="FILE", help="also write the result (per-query values included) as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the sorted per-query differences vs the baseline")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --plot files")


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="every system on every dataset of a suite: the BEIR table (cached per cell, "
                       "resumable)")
    p.add_argument("suite", help="suite TOML file: [[dataset]] and [[system]] tables (see densekit.eval.benchmark)")
    p.add_argument("--out", required=True, help="benchmark folder: cells and the table are written there")
    p.add_argument("--indexes", help="folder of the dense indexes, one per (dataset, model), built there when absent "
                   "(default: OUT/indexes); keep it apart from OUT to commit OUT without them")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download an official BEIR dataset (online only)")
    d.add_argument("name")
    d.add_argument("--out", required=True, help="folder to download into: the dataset is written to OUT/NAME")


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="dense index utilities")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a corpus and save a FAISS index folder (resumable)")
    b.add_argument("--data", required=True, help="BEIR folder or dataset name under $DENSEKIT_DATA")
    b.add_argument("--model", default=DEFAULT_ENCODER)
    b.add_argument("--out", required=True)
    b.add_argument("--factory", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF256,PQ32 ...")
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--shard-size", type=positive_int, default=4096, help="docs per resumable encoding piece")
    b.add_argument("--num-shards", type=positive_int, default=None,
                   help="split the corpus into N contiguous shards and encode only --shard-index here; the index is "
                        "then built by `densekit index merge` (default: $WORLD_SIZE under torchrun/accelerate, where "
                        "rank 0 waits for every shard and merges; else 1: encode everything and build)")
    b.add_argument("--shard-index", type=non_negative_int, default=None,
                   help="which shard this process encodes, 0..N-1 (default: $RANK under torchrun/accelerate)")
    b.add_argument("--device", default=None,
                   help="torch device to encode on (default: $DENSEKIT_DEVICE, else cuda:$LOCAL_RANK when CUDA is "
                        "available, else cpu)")
    b.add_argument("--arrow", action="store_true",
                   help="open the corpus as a memory-mapped Arrow dataset (`datasets`, cached in $DENSEKIT_CACHE/datasets) "
                        "instead of a dict in memory: for corpora bigger than RAM")
    _merge_args(b)
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing densekit index at --out (anything else there is never replaced)")
    m = isub.add_parser("merge", help="build the index from the shards of `index build --num-shards N --shard-index I`")
    m.add_argument("--out", required=True, help="index folder to write")
    m.add_argument("--shards", nargs="+", default=None,
                   help="shard folders, or folders holding them (default: <out>.partial, where index build writes them; "
                        "it is deleted after a successful merge, folders given here never are)")
    m.add_argument("--factory", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF256,PQ32 ...")
    _merge_args(m)
    m.add_argument("--overwrite", action="store_true",
                   help="replace an existing densekit index at --out (anything else there is never replaced)")


def _merge_args(p) -> None:
    p.add_argument("--train-sample", type=positive_int, default=100_000,
                   help="vectors sampled (seeded, from every shard) to train IVF/PQ quantisers")
    p.add_argument("--add-batch", type=positive_int, default=65536,
                   help="vectors read from the shards and added to the index at a time (merge memory = index + one batch)")
    p.add_argument("--on-disk", action="store_true",
                   help="IVF factories: keep the inverted lists in <out>/lists.ivfdata (FAISS merge_ondisk), memory-mapped "
                        "when searching, so neither the merge nor search holds them in RAM")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="search a saved index with a text query")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True, action="append", help="repeat for several queries")
    p.add_argument("--model", help="encoder (default: the model the index was built with)")
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--nprobe", type=positive_int, help="IVF lists searched per query")
    p.add_argument("--ef-search", type=positive_int, help="HNSW efSearch")
    p.add_argument("--json", action="store_true")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="train_command", required=True)
    r = tsub.add_parser("retriever", help="train a dual encoder (InfoNCE or MW loss, or distil teacher scores)")
    _mixture_args(r, "encoder", "example")
    r.add_argument("--model", default=DEFAULT_ENCODER)
    r.add_argument("--out", required=True)
    source = r.add_mutually_exclusive_group()
    source.add_argument("--negatives", "--train-file", dest="train_file", nargs="+",
                        help="JSONL {query|query_id, positives, negatives} (doc ids of --data's corpus; one file per "
                        "--data), e.g. from `densekit mine`; --loss margin-mse / kl also need positive_scores, "
                        "negative_scores (teacher scores aligned with the lists)")
    source.add_argument("--triples", help="TSV of query<TAB>positive<TAB>negative texts")
    source.add_argument("--unsupervised", action="store_true", help="Contriever-style random crop pairs from the corpus")
    _run_folder_args(r)
    _config_args(r, ("train", "retriever"))
    b = tsub.add_parser("reranker", help="train a reranker of any kind (yes/no, query likelihood, BlockRank, "
                        "cross-encoder; SFT, CL or unified; LoRA)")
    _reranker_data_args(b)
    trainable = reranker_kinds.trainable()
    b.add_argument("--kind", choices=trainable, default=reranker_kinds.DEFAULT_KIND,
                   help="; ".join(f"{k}: {reranker_kinds.get(k).help}" for k in trainable))
    _config_args(b, ("train", "reranker"))


def _run_folder_args(p) -> None:
    p.add_argument("--resume", action="store_true", help="continue the same run from the last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out holding a densekit training run "
                   "(removes only its checkpoints, log and model)")


def _mixture_args(r, what: str, unit: str) -> None:
    """--data, --split and --mix of a training command: one dataset, or several trained on as one mixture."""
    r.add_argument("--data", required=True, nargs="+", help=f"BEIR folder(s) or dataset name(s) (corpus; qrels of "
                   f"--split); several train one {what} on their mixture (--mix)")
    r.add_argument("--split", default=["train"], nargs="+", help="the training split, one for every --data or one each")
    r.add_argument("--mix", choices=["proportional", "even"], default="proportional",
                   help=f"several --data: every {unit} once (a dataset weighs by its size), or as many {unit}s from "
                   "each dataset as from the largest (smaller ones repeated)")


def _reranker_data_args(r) -> None:
    _mixture_args(r, "reranker", "group")
    r.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    r.add_argument("--out", required=True)
    r.add_argument("--first-stage", choices=["dense", "bm25"], default="dense", help="where hard negatives come from")
    r.add_argument("--retriever-model", default=None, help=f"dense first stage encoder (default: {DEFAULT_ENCODER})")
    r.add_argument("--index", help="dense index folder of the corpus (built there when absent)")
    r.add_argument("--depth", type=positive_int, default=30, help="negatives: first-stage top-depth minus positives")
    r.add_argument("--max-queries", type=positive_int, help="only the first N training queries (sorted ids)")
    r.add_argument("--eval-split", help="a split with qrels the model does not train on (e.g. dev), watched while training")
    r.add_argument("--eval-every", type=positive_int, help="log --eval-split's nDCG@10 (reranked first-stage top "
                   "--eval-k) every N optimizer steps and after the last, as eval_ndcg@10 in <out>/train_log.jsonl")
    r.add_argument("--eval-queries", type=positive_int, default=50, help="--eval-split's first N judged queries (sorted ids)")
    r.add_argument("--eval-k", type=positive_int, default=20, help="first-stage candidates reranked for --eval-every")
    _run_folder_args(r)


def _add_mine(sub) -> None:
    p = sub.add_parser("mine", help="mine hard negatives for training (writes the JSONL training format)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--index", help="densekit index folder of this corpus (dense mining); without it BM25 is used")
    p.add_argument("--retriever", choices=["bm25", "dense", "hybrid"], default=None,
                   help="where negatives come from (default: dense with --index, else bm25); hybrid needs --index")
    p.add_argument("--hybrid-weight", type=unit_float, default=None, metavar="W",
                   help="hybrid: (1-W)*norm(bm25) + W*norm(dense) (default 0.5)")
    p.add_argument("--hybrid-norm", choices=["z", "minmax", "rrf"], default=None, help="hybrid: normalisation (default: z)")
    p.add_argument("--model", help="encoder for the queries (default: the index's model)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (refused without it)")
    p.add_argument("--teacher", metavar="SPEC", help="a reranker (spec as eval's --reranker) that scores every mined "
                   "positive and negative: the scores go into the file (positive_scores, negative_scores) for "
                   "train retriever --loss margin-mse | kl")
    p.add_argument("--denoise", action="store_true", help="with --teacher: drop the negatives the teacher scores above "
                   "every positive of their query (likely unjudged relevant documents); the count is printed")
    p.add_argument("--teacher-cache", metavar="DIR", help="with --teacher: keep its scores on disk here, per query group, so an "
                   "interrupted run resumes")
    p.add_argument("--teacher-batch-size", type=positive_int, default=8, help="with --teacher: pairs scored per batch")
    _config_args(p, ("mine",))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every flag's default, except None/False (flags whose help text says what they default to)
    and on/off switches (``--x`` / ``--no-x``, whose name says what the default is)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS or \
                isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("densekit")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _subparsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _subparsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densekit", description="dense retrieval and reranking toolkit",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"densekit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_compare(sub)
    _add_benchmark(sub)
    _add_data(sub)
    _add_index(sub)
    _add_search(sub)
    _add_train(sub)
    _add_mine(sub)
    for child in _subparsers(parser):
        child.formatter_class = _HelpFormatter
        for action in child._actions:  # an undocumented flag with a default still shows the default
            if action.help is None and action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                action.help = "(default: %(default)s)"
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject, before any work, flag combinations whose flags would be ignored and outputs that cannot be
    written (``parser.error``: ``densekit: error: ...``, exit 2). Flags checked here default to None, so
    only flags the user gave are refused."""
    def given(*names: str) -> list[str]:
        return ["--" + name.replace("_", "-") for name in names if getattr(args, name, None) not in (None, False)]

    def refuse(flags: list[str], reason: str) -> None:
        if flags:
            parser.error(f"{', '.join(flags)} {'is' if len(flags) == 1 else 'are'} ignored {reason}: drop "
                         f"{'it' if len(flags) == 1 else 'them'}")

    # eval's checks are EvalConfig's (when cmd_eval builds it) and jobs.check_evaluate's: the API runs the same ones
    if args.command == "mine":
        retriever = args.retriever or ("dense" if args.index else "bm25")
        if not args.index:
            refuse(given("max_ratio", "model"), "with BM25 mining (dense mining needs --index)")
            if retriever != "bm25":
                parser.error(f"--retriever {retriever} mines through a dense index: add --index")
        elif retriever == "bm25":
            parser.error("--index is ignored with --retriever bm25: drop it (or use dense / hybrid)")
        if retriever != "hybrid":
            refuse(given("hybrid_weight", "hybrid_norm"), f"with --retriever {retriever} (they serve hybrid)")
        else:
            refuse(given("max_ratio"), "with --retriever hybrid (it compares dense scores)")
            if args.hybrid_norm == "rrf" and args.hybrid_weight is not None:
                parser.error("--hybrid-norm rrf (reciprocal-rank fusion) has no weight: drop --hybrid-weight")
        if args.rank_from >= args.rank_to:
            parser.error(f"--rank-from {args.rank_from} must be below --rank-to {args.rank_to}")
    elif args.command == "train" and args.train_command == "retriever":
        if args.loss != "infonce":
            refuse(given("symmetric", "decoupled"), f"with --loss {args.loss} (InfoNCE options)")
        if args.loss != "mw":
            refuse(given("per_query"), f"with --loss {args.loss} (an MW option)")
        if args.loss != "kl":
            refuse(given("teacher_temperature"), f"with --loss {args.loss} (a kl option)")
        if args.loss in DISTILL_LOSSES and not args.train_file:
            parser.error(f"--loss {args.loss} distils teacher scores: train from a --train-file whose lines carry "
                         "positive_scores and negative_scores")
    elif args.command == "train" and args.train_command == "reranker":
        if args.first_stage == "bm25":
            refuse(given("index", "retriever_model"), "with --first-stage bm25 (dense first-stage flags)")
        other = [name for name, by_kind in _kind_settings().items()
                 if args.kind not in by_kind and getattr(args, name, None) is not None]
        refuse(["--" + name.replace("_", "-") for name in other], f"by --kind {args.kind} (other kinds' settings)")
        objectives = reranker_kinds.get(args.kind).objectives
        if args.objective is not None and args.objective not in objectives:
            parser.error(f"--objective {args.objective} does not fit --kind {args.kind}: use {' or '.join(objectives)}")
    elif args.command == "index" and args.index_command == "build":
        if (args.num_shards is None) != (args.shard_index is None):
            parser.error("--num-shards and --shard-index go together (or neither: torchrun's $WORLD_SIZE/$RANK, else 1 shard)")
        if args.num_shards is not None and args.shard_index >= args.num_shards:
            parser.error(f"--shard-index {args.shard_index} must be below --num-shards {args.num_shards}")


def _note(message: str) -> None:
    print(f"densekit: note: {message}", file=sys.stderr)


def _print_json(value) -> None:
    print(json.dumps(value, allow_nan=False))


def cmd_eval(args) -> int:
    """``jobs.evaluate`` of the ``EvalConfig`` the flags make: one JSON object per system with ``--json``, else a
    table. A refused setting (``EvalConfig`` or ``jobs.check_evaluate``) is a ValueError / DataError: exit 2."""
    results = jobs.evaluate(config_from_args(EvalConfig, args), note=_note)
    if args.json:
        for result in results.values():
            _print_json({**result["system"], **result["metrics"]})
    else:
        from densekit.eval.report import format_table

        print(format_table({label: result["metrics"] for label, result in results.items()}))
    return 0


def cmd_compare(args) -> int:
    from .report import to_markdown

    result = jobs.compare(args.runs, args.data, args.split, args.metrics, args.baseline, args.permutations, args.seed,
                          args.max_queries, args.relevance_level, args.keep_identical_ids, args.json, args.plot,
                          args.overwrite)
    print(to_markdown(result, args.alpha))
    return 0


def cmd_benchmark(args) -> int:
    from .benchmark import load_suite, run_benchmark, to_markdown

    table = run_benchmark(load_suite(args.suite), args.out, args.indexes)
    if table:
        print(to_markdown(table))
    return 0


def cmd_data(args) -> int:
    from .data import download

    print(download(args.name, args.out))
    return 0


def cmd_index(args) -> int:
    if args.index_command == "merge":
        _print_json(jobs.merge_index(args.out, args.shards, args.factory, args.train_sample, args.add_batch, args.on_disk,
                                     args.overwrite))
        return 0
    _print_json(jobs.build_index(args.data, args.model, args.out, args.factory, args.batch_size, args.shard_size,
                                 args.num_shards, args.shard_index, args.device, args.arrow, args.train_sample,
                                 args.add_batch, args.on_disk, args.overwrite))
    return 0


def cmd_search(args) -> int:
    results = jobs.search(args.index, args.query, args.model, args.k, args.nprobe, args.ef_search)
    if args.json:
        _print_json(results)  # always a list, one object per --query
    else:
        for result in results:
            print(f"query: {result['query']}")
            for rank, hit in enumerate(result["hits"], start=1):
                print(f"{rank:>4}  {hit['score']:.4f}  {hit['id']}")
    return 0


def _main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` / ``torchrun`` run (they print nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_train(args) -> int:
    if args.train_command == "retriever":
        n_negatives = args.n_negatives if args.n_negatives is not None else (1 if (args.train_file or args.triples) else 0)
        result = jobs.train_retriever(args.data, args.out, config_from_args(TrainConfig, args, n_negatives=n_negatives),
                                      args.model, args.split, args.train_file, args.triples, args.unsupervised,
                                      args.resume, args.overwrite, args.mix)
    else:
        kind = reranker_kinds.get(args.kind)
        defaults = {k: v for k, v in kind.train_defaults.items() if getattr(args, k) is None}
        options = config_from_args(kind.train_options, args) if kind.train_options else None
        result = jobs.train_reranker(args.data, args.out, config_from_args(RerankTrainConfig, args, **defaults),
                                     config_from_args(kind.config, args), args.model, args.split,
                                     args.first_stage, args.retriever_model, args.index, args.depth, args.max_queries,
                                     args.resume, args.overwrite, args.eval_split, args.eval_every, args.eval_queries,
                                     args.eval_k, options, args.mix)
    if _main_process():
        _print_json(result)
    return 0


def cmd_mine(args) -> int:
    _print_json(jobs.mine(args.data, args.out, config_from_args(MineConfig, args), args.split, args.index, args.model,
                          args.overwrite, args.retriever, args.hybrid_weight, args.hybrid_norm, args.teacher,
                          args.denoise, args.teacher_cache, args.teacher_batch_size))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad arguments exit 2 (argparse, before any work); bad input data, files, models
    (DataError, ValueError, OSError, ModelNotAvailable) print ``densekit: error: ...`` and return 2.
    Anything else (TypeError, AttributeError ...) is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    handlers = {"eval": cmd_eval, "compare": cmd_compare, "benchmark": cmd_benchmark, "data": cmd_data, "index": cmd_index, "search": cmd_search, "train": cmd_train,
                "mine": cmd_mine}
    try:
        if os.environ.get(device.VARIABLE, "").strip():  # a device torch cannot use: refused before any work
            device.inference_device()
        return handlers[args.command](args)
    except (DataError, ValueError, OSError, EOFError, ModelNotAvailable) as err:
        print(f"densekit: error: {_describe(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # FAISS and torch report a full disk as a RuntimeError; any other one is a bug
        if "No space left on device" not in str(err):
            raise
        print(f"densekit: error: {_describe(OSError(28, str(err)))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"densekit: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130


# Commands that keep their finished work on disk and pick it up when run again.
_RESUMABLE = {("index", "build"): "rerun the same command to resume (finished shards are kept)",
              ("benchmark", None): "rerun the same command to resume (finished cells are kept)",
              ("train", None): "rerun the same command with --resume to continue from the last checkpoint"}


def _after_interrupt(args) -> str:
    """What a user does after Ctrl-C: resume where the command can, else know that nothing was written."""
    for (command, sub), advice in _RESUMABLE.items():
        if args.command == command and (sub is None or getattr(args, f"{command}_command", None) == sub):
            return advice
    return "nothing was written (outputs are written whole, at the end): rerun the same command"


def _describe(err: BaseException) -> str:
    """One line for the user: the message, with the file named for OSErrors that carry one, and what to do
    when the disk is full."""
    import errno

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"{err.filename}: " if err.filename else ""
        return (f"{where}no space left on the device (or quota exceeded); nothing densekit had written before was "
                f"replaced: free space or choose another output path, then rerun the same command ({err.strerror})")
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    return str(err).strip() or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
