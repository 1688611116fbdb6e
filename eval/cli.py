"""``densekit`` command line: thin argument parsing over the library functions."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from retriever.io import check_file_target, check_target
from retriever.models import ModelNotAvailable

from .data import DataError

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


# ---------------------------------------------------------------- argument types (argparse: exit 2 on a bad value)

def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not {what} (must be >= {minimum})")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "a non-negative integer")
group_size_int = _int_at_least(2, "a group size (1 positive + at least 1 negative)")


def _float_in(low: float, high: float, low_open: bool, what: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (low_open and value == low) or value > high:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_float = _float_in(0.0, float("inf"), True, "a positive number (> 0)")
non_negative_float = _float_in(0.0, float("inf"), False, "a non-negative number (>= 0)")
unit_float = _float_in(0.0, 1.0, False, "a number in [0, 1]")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="retrieve (and optionally rerank) a BEIR split and print metrics")
    p.add_argument("--data", required=True, help="BEIR folder, or a dataset name under $DENSEKIT_DATA")
    p.add_argument("--retriever", choices=["bm25", "dense"], default=None, help="first stage (default: bm25; not with --run)")
    p.add_argument("--run", metavar="FILE", help="score (and with --reranker, rerank) this saved TREC run file instead "
                   "of running a first stage")
    p.add_argument("--model", nargs="+", default=None,
                   help=f"dense encoder(s) (names or folders); several models are evaluated side by side "
                   f"(default: {DEFAULT_ENCODER})")
    p.add_argument("--index", help="dense, one model: reuse this index folder (built there when absent)")
    p.add_argument("--factory", default=None, help="dense: FAISS factory string when building an index (default: Flat)")
    p.add_argument("--nprobe", type=positive_int, help="dense: IVF lists searched per query (FAISS default 1)")
    p.add_argument("--ef-search", type=positive_int, help="dense: HNSW efSearch")
    p.add_argument("--batch-size", type=positive_int, default=None, help="dense: encoding batch size (default: 64)")
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=positive_int, default=100, help="first-stage depth; also the cut-off of recall, map and auc")
    p.add_argument("--max-queries", type=positive_int, help="only the first N queries of the split (sorted ids)")
    p.add_argument("--relevance-level", type=positive_int, default=1,
                   help="min grade counted relevant by binary measures (>= 1, as pytrec_eval)")
    p.add_argument("--keep-identical-ids", action="store_true", help="do not drop docs whose id equals the query id")
    p.add_argument("--save-run", help="write the (final) run as a TREC run file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save-run file (refused without it)")
    p.add_argument("--reranker", help="rerank with a trained reranker folder, a causal LM name (zero-shot pointwise "
                   "prompt) or blockrank:<folder or model>")
    p.add_argument("--rerank-mode", choices=["attention", "decode"], default=None,
                   help="BlockRank: rank by attention mass (its default), or put the decoded answer first")
    p.add_argument("--rerank-top-k", type=positive_int, default=None, help="documents reranked per query (default: 20)")
    p.add_argument("--rerank-batch-size", type=positive_int, default=None, help="reranker batch size (default: 8)")
    p.add_argument("--fuse", type=_fuse_weight, default=None, metavar="W|auto",
                   help="fuse first-stage and reranker scores per query: (1-W)*norm(first) + W*norm(rerank); 'auto' "
                   "picks W on a tuning split (never the evaluated one)")
    p.add_argument("--fuse-norm", choices=["z", "minmax"], default=None, help="per-query normalisation for --fuse (default: z)")
    p.add_argument("--tune-split", help="--fuse auto: the split whose qrels choose W (default: dl20 for dl19 and back, "
                   "else dev, else train)")
    p.add_argument("--tune-run", metavar="FILE", help="--fuse auto with --run: the saved first-stage run of the tuning split")
    p.add_argument("--tune-queries", type=positive_int, default=None,
                   help="--fuse auto: first N judged tuning queries, sorted ids (default: 100)")
    p.add_argument("--roc", help="draw the ROC curves (top-k candidates) of every evaluated system into this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object per system instead of a table")


def _fuse_weight(text: str):
    return "auto" if text == "auto" else unit_float(text)


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
    p.add_argument("--alpha", type=_float_in(0.0, 1.0, True, "a level in (0, 1]"), default=0.05,
                   help="significance level of the table's marks")
    p.add_argument("--max-queries", type=positive_int, help="only the first N queries of the split (sorted ids)")
    p.add_argument("--relevance-level", type=positive_int, default=1, help="min grade counted relevant by binary measures")
    p.add_argument("--keep-identical-ids", action="store_true", help="do not drop docs whose id equals the query id")
    p.add_argument("--json", metavar="FILE", help="also write the result (per-query values included) as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw the sorted per-query differences vs the baseline")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --plot files")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download an official BEIR dataset (online only)")
    d.add_argument("name")
    d.add_argument("--out", required=True)


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="dense index utilities")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a corpus and save a FAISS index folder (resumable)")
    b.add_argument("--data", required=True, help="BEIR folder or dataset name under $DENSEKIT_DATA")
    b.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    b.add_argument("--out", required=True)
    b.add_argument("--factory", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF256,PQ32 ...")
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--shard-size", type=positive_int, default=4096, help="docs per resumable encoding piece")
    b.add_argument("--num-shards", type=positive_int, default=None,
                   help="split the corpus into N contiguous shards and encode only --shard-index here; the index is "
                        "then built by `densekit index merge` (default: $WORLD_SIZE under torchrun/accelerate, where "
                        "rank 0 waits for every shard and merges; else 1: encode everything and build)")
    b.add_argument("--shard-index", type=_int_at_least(0, "a non-negative integer"), default=None,
                   help="which shard this process encodes, 0..N-1 (default: $RANK under torchrun/accelerate)")
    b.add_argument("--device", default=None,
                   help="torch device to encode on (default: cuda:$LOCAL_RANK when CUDA is available, else cpu)")
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
    r = tsub.add_parser("retriever", help="train a dual encoder (InfoNCE or MW loss)")
    r.add_argument("--data", required=True, help="BEIR folder or dataset name (its corpus; qrels of --split)")
    r.add_argument("--split", default="train")
    r.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    r.add_argument("--out", required=True)
    source = r.add_mutually_exclusive_group()
    source.add_argument("--negatives", "--train-file", dest="train_file",
                        help="JSONL {query|query_id, positives, negatives} (doc ids), e.g. from `densekit mine`")
    source.add_argument("--triples", help="TSV of query<TAB>positive<TAB>negative texts")
    source.add_argument("--unsupervised", action="store_true", help="Contriever-style random crop pairs from the corpus")
    from retriever.train import TrainConfig

    defaults = TrainConfig()
    r.add_argument("--loss", choices=["infonce", "mw"], default=defaults.loss)
    r.add_argument("--temperature", type=positive_float, default=defaults.temperature)
    r.add_argument("--symmetric", action="store_true", help="InfoNCE: add the doc->query term")
    r.add_argument("--decoupled", action="store_true", help="InfoNCE: DEXML decoupled softmax")
    r.add_argument("--per-query", action="store_true", help="MW: pair positives only within their query")
    r.add_argument("--batch-size", type=positive_int, default=defaults.batch_size,
                   help="queries per micro-batch, all processes together (N processes take batch/N each)")
    r.add_argument("--grad-accum", type=positive_int, default=defaults.grad_accum)
    r.add_argument("--n-negatives", type=non_negative_int, default=None, help="hard negatives per query (default 1 with a negatives file, else 0)")
    r.add_argument("--lr", type=positive_float, default=defaults.lr)
    r.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    r.add_argument("--max-steps", type=positive_int)
    r.add_argument("--warmup-ratio", type=unit_float, default=defaults.warmup_ratio)
    r.add_argument("--seed", type=non_negative_int, default=defaults.seed)
    r.add_argument("--bf16", action="store_true")
    r.add_argument("--lora", action="store_true")
    r.add_argument("--lora-r", type=positive_int, default=defaults.lora_r)
    r.add_argument("--grad-cache-chunk", type=positive_int, help="GradCache: encode in chunks of this many texts")
    r.add_argument("--embed-chunk", type=positive_int, help="documents per forward, sorted by length (default 8 on CPU, the batch on GPU)")
    r.add_argument("--no-gather-negatives", action="store_true",
                   help="several processes: score each process's queries against its own documents only (default: "
                   "every process's documents are negatives for all queries, as one process with the same --batch-size)")
    r.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every)
    r.add_argument("--query-max-length", type=positive_int)
    r.add_argument("--doc-max-length", type=positive_int)
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    r.add_argument("--overwrite", action="store_true", help="start over in an --out holding a densekit training run "
                   "(removes only its checkpoints, log and model)")
    _add_train_reranker(tsub)


def _add_train_reranker(tsub) -> None:
    from reranker.train import RerankTrainConfig

    d = RerankTrainConfig()
    r = tsub.add_parser("reranker", help="train an LLM reranker (yes/no or query-likelihood scorer; SFT, CL or unified; LoRA)")
    _reranker_data_args(r, d)
    r.add_argument("--scorer", choices=["pointwise", "qlm"], default="pointwise",
                   help="pointwise: yes/no logits; qlm: log P(query | document)")
    r.add_argument("--objective", choices=["sft", "cl", "unified"], default=d.objective)
    r.add_argument("--weight", choices=["sft", "cl"], default=d.weight, help="unified: gradient weight source")
    r.add_argument("--direction", choices=["sft", "cl"], default=d.direction, help="unified: gradient direction source")
    r.add_argument("--temperature", type=positive_float, default=d.temperature)
    r.add_argument("--group-size", type=group_size_int, default=d.group_size)
    r.add_argument("--doc-max-tokens", type=positive_int, default=192)
    b = tsub.add_parser("blockrank", help="train BlockRank (LM loss on the answer id + attention InfoNCE, LoRA)")
    _reranker_data_args(b, d)
    b.add_argument("--group-size", type=group_size_int, default=20, help="documents per prompt (1 positive + negatives)")
    b.add_argument("--aux-weight", type=non_negative_float, default=d.aux_weight)
    b.add_argument("--aux-temperature", type=positive_float, default=d.aux_temperature)
    b.add_argument("--score-layer", type=non_negative_int, help="0-based layer read for attention scores (default 60%% depth)")
    b.add_argument("--doc-max-tokens", type=positive_int, default=128)


def _reranker_data_args(r, d) -> None:
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    r.add_argument("--out", required=True)
    r.add_argument("--first-stage", choices=["dense", "bm25"], default="dense", help="where hard negatives come from")
    r.add_argument("--retriever-model", default=None, help=f"dense first stage encoder (default: {DEFAULT_ENCODER})")
    r.add_argument("--index", help="dense index folder of the corpus (built there when absent)")
    r.add_argument("--depth", type=positive_int, default=30, help="negatives: first-stage top-depth minus positives")
    r.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="groups per optimizer step, all processes together (N processes take batch/N each)")
    r.add_argument("--lr", type=positive_float, default=d.lr)
    r.add_argument("--epochs", type=positive_int, default=d.epochs)
    r.add_argument("--max-steps", type=positive_int)
    r.add_argument("--max-queries", type=positive_int, help="only the first N training queries (sorted ids)")
    r.add_argument("--lora-r", type=positive_int, default=d.lora_r)
    r.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    r.add_argument("--train-layers", type=positive_int, help="train only the top L decoder layers (lower ones get no gradient)")
    r.add_argument("--micro-batch", type=positive_int, help="groups per forward; gradients accumulate up to --batch-size")
    r.add_argument("--seed", type=non_negative_int, default=d.seed)
    r.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every)
    r.add_argument("--resume", action="store_true", help="continue the same run from the last checkpoint in --out")
    r.add_argument("--overwrite", action="store_true", help="start over in an --out holding a densekit training run "
                   "(removes only its checkpoints, log and model)")


def _add_mine(sub) -> None:
    p = sub.add_parser("mine", help="mine hard negatives for training (writes the JSONL training format)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--index", help="densekit index folder of this corpus (dense mining); without it BM25 is used")
    p.add_argument("--model", help="encoder for the queries (default: the index's model)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (refused without it)")
    p.add_argument("--rank-from", type=non_negative_int, default=10, help="first rank kept (0-based); skipping the top avoids false negatives")
    p.add_argument("--rank-to", type=positive_int, default=50, help="end of the kept ranks (exclusive)")
    p.add_argument("--max-negatives", type=positive_int, default=20)
    p.add_argument("--max-ratio", type=positive_float, help="drop candidates scoring above this x the lowest positive score (dense only)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every flag's default, except None/False (flags whose help text says what they default to)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
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

    if args.command == "eval":
        if args.run and args.retriever:
            parser.error("--run scores a saved run; it replaces the first stage: drop --retriever (or --run)")
        retriever = args.retriever or ("run" if args.run else "bm25")
        dense_only = ("model", "index", "factory", "nprobe", "ef_search", "batch_size")
        if retriever != "dense":
            refuse(given(*dense_only), "with --run (it replaces the first stage)" if retriever == "run"
                   else "with --retriever bm25 (dense-only flags; add --retriever dense)")
        if args.index and args.model and len(args.model) > 1:
            parser.error("--index serves one model; drop it to compare several models")
        if args.nprobe is not None and args.ef_search is not None:
            parser.error("--nprobe applies to IVF indexes and --ef-search to HNSW indexes: give one of them")
        if not args.reranker:
            refuse(given("rerank_mode", "rerank_top_k", "rerank_batch_size", "fuse"), "without --reranker")
        if args.fuse is None:
            refuse(given("fuse_norm", "tune_split", "tune_run", "tune_queries"), "without --fuse")
        elif args.fuse != "auto":
            refuse(given("tune_split", "tune_run", "tune_queries"), "with a fixed --fuse W (they serve --fuse auto)")
        for flag, value in (("--save-run", args.save_run), ("--roc", args.roc)):
            if value and Path(value).is_dir():
                parser.error(f"{flag} {value}: is a folder; give a file path")
            if value and Path(value).parent.exists() and not Path(value).parent.is_dir():
                parser.error(f"{flag} {value}: {Path(value).parent} is a file, not a folder")
        if args.run and not Path(args.run).is_file():
            parser.error(f"--run {args.run}: {'is a folder' if Path(args.run).is_dir() else 'no such file'}; "
                         "give a TREC run file ('qid Q0 docid rank score tag' lines)")
    elif args.command == "mine":
        if not args.index:
            refuse(given("max_ratio", "model"), "with BM25 mining (dense mining needs --index)")
        if args.rank_from >= args.rank_to:
            parser.error(f"--rank-from {args.rank_from} must be below --rank-to {args.rank_to}")
    elif args.command == "train" and args.train_command == "retriever":
        if args.loss == "mw":
            refuse(given("symmetric", "decoupled"), "with --loss mw (InfoNCE options)")
        else:
            refuse(given("per_query"), f"with --loss {args.loss} (an MW option)")
    elif args.command == "train" and args.train_command in ("reranker", "blockrank"):
        if args.first_stage == "bm25":
            refuse(given("index", "retriever_model"), "with --first-stage bm25 (dense first-stage flags)")
    elif args.command == "index" and args.index_command == "build":
        if (args.num_shards is None) != (args.shard_index is None):
            parser.error("--num-shards and --shard-index go together (or neither: torchrun's $WORLD_SIZE/$RANK, else 1 shard)")
        if args.num_shards is not None and args.shard_index >= args.num_shards:
            parser.error(f"--shard-index {args.shard_index} must be below --num-shards {args.num_shards}")


def _note(message: str) -> None:
    print(f"densekit: note: {message}", file=sys.stderr)


def _saved_run_for(run: dict, path: str, queries: dict, ds, split: str) -> dict:
    """The saved run restricted to the evaluated queries; notes (stderr) count what is left out."""
    shared = sum(1 for qid in queries if qid in run)
    if not shared:
        raise DataError(f"{path}: none of its {len(run)} queries is an evaluated query of {ds.path} split {split!r} "
                        f"(queries with qrels in that split and text in the queries file); check --data and --split")
    outside = len(run) - shared
    if outside:
        _note(f"{path}: {outside} run quer{'y' if outside == 1 else 'ies'} skipped (no qrels in split {split!r}, "
              "no text in the queries file, or beyond --max-queries)")
    if shared < len(queries):
        _note(f"{len(queries) - shared} evaluated quer{'y is' if len(queries) - shared == 1 else 'ies are'} absent "
              f"from {path} and count 0")
    return {qid: run[qid] for qid in queries if qid in run}


def _finite_or_none(values: dict) -> dict:
    """NaN/inf (an undefined AUC) becomes None: JSON null, ``n/a`` in tables."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def cmd_eval(args) -> int:
    """First stage (bm25 | dense | a saved --run), optional rerank, metrics of every evaluated query.

    The evaluated queries are the split's queries that have qrels and text (the first --max-queries in
    sorted id order); each mean is over all of them, a query without hits counting 0, which is what
    pytrec_eval gives for a run holding every evaluated query (the beir convention)."""
    from retriever.search import first_stage

    from . import pipeline
    from .data import load_dataset, resolve_dataset, select_queries

    start = time.perf_counter()
    retriever = args.retriever or ("run" if args.run else "bm25")
    saved_run = pipeline.read_run(args.run) if args.run else None
    ds = load_dataset(resolve_dataset(args.data), args.split)
    queries = select_queries(ds.queries, args.max_queries)
    if args.save_run:  # refuse ids a TREC file cannot hold before any work
        for qid in queries:
            pipeline.check_trec_id(qid, "query id")
        for doc in ds.corpus:
            pipeline.check_trec_id(doc, "doc id")
    if saved_run is not None:
        saved_run = _saved_run_for(saved_run, args.run, queries, ds, args.split)
    models = (args.model or [DEFAULT_ENCODER]) if retriever == "dense" else [None]
    if args.save_run:  # the output-path rule, before any work: an existing file is replaced only with --overwrite
        for number in range(1, len(models) + 1):
            check_file_target(args.save_run + ("" if len(models) == 1 else f".{number}"), args.overwrite)
    reranker, rerank_mode = None, None
    rerank_top_k = args.rerank_top_k or 20
    if args.reranker:
        from reranker.base import load_reranker

        reranker = load_reranker(args.reranker)
        modes = tuple(getattr(reranker, "modes", ()))
        if len(modes) > 1:
            rerank_mode = args.rerank_mode or modes[0]
        elif args.rerank_mode:
            raise ValueError(f"--rerank-mode {args.rerank_mode}: the {getattr(reranker, 'kind', '?')} reranker has "
                             f"no modes (BlockRank has attention and decode); drop --rerank-mode")
    metric_names = list(dict.fromkeys([*pipeline.DEFAULT_METRICS, f"recall@{args.top_k}", f"map@{args.top_k}"]))
    runs, rows, fields = {}, {}, {}
    for model in models:
        t0 = time.perf_counter()
        if saved_run is not None:
            run, label = saved_run, f"run:{args.run}"
        else:
            run = first_stage(retriever, ds.corpus, queries, args.top_k, model=model, index_dir=args.index,
                                       factory=args.factory or "Flat", batch_size=args.batch_size or 64,
                                       nprobe=args.nprobe, ef_search=args.ef_search)
            label = retriever if model is None else f"dense:{model}"
        run = {qid: run.get(qid, {}) for qid in queries}  # every evaluated query, empty when it has no hits
        if reranker is not None:
            missing = sum(1 for docs in run.values() for doc in docs if doc not in ds.corpus)
            if missing:
                _note(f"rerank: skipped {missing} run doc id(s) absent from the corpus of {ds.path}")
                run = {qid: {d: s for d, s in docs.items() if d in ds.corpus} for qid, docs in run.items()}
            first = run
            run = pipeline.rerank_stage(run, ds.corpus, queries, reranker, rerank_top_k, args.rerank_batch_size or 8,
                                        rerank_mode)
            run = {qid: run.get(qid, {}) for qid in queries}
            label += f">{args.reranker}@{rerank_top_k}" + (f"/{rerank_mode}" if rerank_mode else "")
            if args.fuse is not None:
                fusion = _fusion(args, ds, retriever, model, reranker, rerank_top_k, rerank_mode)
                run = pipeline.fuse(first, run, fusion["weight"], rerank_top_k, fusion["norm"])
                label += f"+fuse{fusion['weight']}"
        _, means = pipeline.evaluate(run, ds.qrels, metric_names, args.relevance_level,
                                     ignore_identical_ids=not args.keep_identical_ids, auc_k=args.top_k)
        runs[label] = pipeline.drop_identical_ids(run) if not args.keep_identical_ids else run
        rows[label] = _finite_or_none({**means, "num_queries": len(queries),
                                       "seconds": round(time.perf_counter() - (start if len(rows) == 0 else t0), 3)})
        fields[label] = {"retriever": retriever, "run": args.run, "model": model,
                         "reranker": args.reranker, "rerank_mode": rerank_mode,
                         "rerank_top_k": rerank_top_k if args.reranker else None,
                         "fuse": fusion if args.fuse is not None else None}
        if args.save_run:
            suffix = "" if len(models) == 1 else f".{len(rows)}"
            pipeline.write_run(args.save_run + suffix, run, tag=label)
            empty = sum(1 for docs in run.values() if not docs)
            if empty:  # issue 11 item 10: a TREC file cannot hold a query without hits
                _note(f"{empty} evaluated quer{'y has' if empty == 1 else 'ies have'} no hits and no line in "
                      f"{args.save_run + suffix}; densekit counts {'it' if empty == 1 else 'them'} 0 in every mean: "
                      "score the file with `trec_eval -c` (qrels of the evaluated queries) to get the same figures")
    if args.roc:
        from .plots import plot_roc

        plot_roc(runs, ds.qrels, args.roc, k=args.top_k, relevance_level=args.relevance_level)
    if args.json:
        for label, values in rows.items():
            print(json.dumps({"dataset": str(ds.path), "split": args.split, **fields[label], **values}, allow_nan=False))
    else:
        print(pipeline.format_table(rows))
    return 0


def _fusion(args, ds, retriever: str, model, reranker, top_k: int, mode) -> dict:
    """``{"weight", "norm", "tuned_on", "tune_queries"}``: the given weight, or with ``auto`` the best
    weight on the tuning split's first ``--tune-queries`` judged queries (its own first stage, reranked)."""
    from . import pipeline

    norm = args.fuse_norm or "z"
    if args.fuse != "auto":
        return {"weight": args.fuse, "norm": norm, "tuned_on": None, "tune_queries": None}
    tune = pipeline.tuning_split(ds.path, args.split, args.tune_split)
    if retriever == "run" and not args.tune_run:
        raise ValueError(f"--fuse auto with --run needs --tune-run: the first-stage run of the tuning split {tune!r}")
    weight, tuned = pipeline.tune_fusion(ds.path, tune, reranker, top_k, norm, args.tune_queries or 100, retriever=retriever,
                                         model=model, index_dir=args.index, run_file=args.tune_run, mode=mode,
                                         batch_size=args.rerank_batch_size or 8, relevance_level=args.relevance_level)
    _note(f"--fuse auto: W={weight} chosen on split {tune!r} ({tuned} queries)")
    return {"weight": weight, "norm": norm, "tuned_on": tune, "tune_queries": tuned}


def cmd_compare(args) -> int:
    """``report.compare`` of the runs on the evaluated queries of ``--data``/``--split`` (as ``densekit eval``)."""
    from . import report
    from .data import load_dataset, resolve_dataset, select_queries

    for path in (args.json, args.plot):
        if path:
            check_file_target(path, args.overwrite)
    ds = load_dataset(resolve_dataset(args.data), args.split)
    result = report.compare(report.read_runs(args.runs), ds.qrels, args.metrics, args.baseline,
                            select_queries(ds.queries, args.max_queries), args.permutations, args.seed,
                            args.relevance_level, not args.keep_identical_ids)
    print(report.to_markdown(result, args.alpha))
    if args.json:
        report.write_json(result, args.json, args.overwrite)
    if args.plot:
        from .plots import plot_differences

        plot_differences(result, args.plot)
    return 0


def cmd_data(args) -> int:
    from .data import download

    print(download(args.name, args.out))
    return 0


def _launcher_shards() -> tuple[int, int] | None:
    """(world size, rank) when launched by torchrun / accelerate launch with more than one process."""
    import os

    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world and rank and world.isdigit() and rank.isdigit() and int(world) > 1:
        return int(world), int(rank)
    return None


def cmd_index(args) -> int:
    if args.index_command == "merge":
        return cmd_index_merge(args)
    from retriever.encoder import DualEncoder
    from retriever.search import build_index

    from .data import load_corpus_of

    check_target(args.out, "index", args.overwrite)  # the output-path rule, before loading anything
    launched = _launcher_shards() if args.num_shards is None else None
    num_shards, shard_index = launched or (args.num_shards or 1, args.shard_index or 0)
    corpus = load_corpus_of(args.data, arrow=args.arrow)
    encoder = DualEncoder.from_pretrained(args.model)
    encoder.model.to(_encode_device(args.device))
    merge = num_shards == 1 or (launched is not None and shard_index == 0)  # torchrun: rank 0 merges
    result = build_index(corpus, encoder, args.out, args.factory, args.batch_size, args.shard_size, overwrite=args.overwrite,
                         num_shards=num_shards, shard_index=shard_index, merge=merge, train_sample=args.train_sample,
                         add_batch=args.add_batch, on_disk=args.on_disk)
    if not merge:
        print(json.dumps({"shard": str(result), "shard_index": shard_index, "num_shards": num_shards}))
        return 0
    print(json.dumps({"index": args.out, "ntotal": result.ntotal, "dim": result.dim, "factory": result.factory}))
    return 0


def _encode_device(device: str | None) -> str:
    """``--device``, else this process's GPU under torchrun/accelerate ($LOCAL_RANK) when CUDA is available, else cpu."""
    import os

    import torch

    if device:
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0) % torch.cuda.device_count()}"


def cmd_index_merge(args) -> int:
    import shutil

    from retriever.shards import merge_shards

    check_target(args.out, "index", args.overwrite)
    work = Path(args.out).with_name(Path(args.out).name + ".partial")
    index = merge_shards(args.shards or [work], args.out, args.factory, args.train_sample, args.add_batch, args.overwrite,
                         on_disk=args.on_disk)
    if args.shards is None:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"index": args.out, "ntotal": index.ntotal, "dim": index.dim, "factory": index.factory}))
    return 0


def cmd_search(args) -> int:
    from retriever.encoder import DualEncoder
    from retriever.index import Index
    from retriever.search import check_encoder

    index = Index.load(args.index)
    encoder = DualEncoder.from_pretrained(args.model or index.meta["model"])
    check_encoder(index, encoder, args.index)  # content hash: also with --model, also a model retrained in place
    index.set_params(nprobe=args.nprobe, ef_search=args.ef_search)
    ids, scores = index.search(encoder.encode(args.query, is_query=True), args.k)
    results = [{"query": q, "hits": [{"id": d, "score": float(s)} for d, s in zip(doc_ids, row)]}
               for q, doc_ids, row in zip(args.query, ids, scores)]
    if args.json:
        print(json.dumps(results, allow_nan=False))  # always a list, one object per --query
    else:
        for result in results:
            print(f"query: {result['query']}")
            for rank, hit in enumerate(result["hits"], start=1):
                print(f"{rank:>4}  {hit['score']:.4f}  {hit['id']}")
    return 0


def check_run_folder(out, resume: bool, overwrite: bool) -> None:
    from retriever.checkpoints import check_run_folder as check

    check(out, resume, overwrite)


def _main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` / ``torchrun`` run (they print nothing)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def cmd_train(args) -> int:
    if args.train_command in ("reranker", "blockrank"):
        return cmd_train_reranker(args)
    return cmd_train_retriever(args)


def cmd_train_reranker(args) -> int:
    from reranker.blockrank import BlockRankConfig, BlockRanker
    from reranker.pointwise import LLMReranker, RerankerConfig
    from reranker.train import RerankTrainConfig, train_reranker
    from retriever.examples import training_groups
    from retriever.search import first_stage

    from .data import load_dataset, resolve_dataset, select_queries

    check_run_folder(args.out, args.resume, args.overwrite)  # before any data is loaded or encoded
    ds = load_dataset(resolve_dataset(args.data), args.split)
    queries = select_queries(ds.queries, args.max_queries)
    run = first_stage(args.first_stage, ds.corpus, queries, args.depth, model=args.retriever_model, index_dir=args.index)
    examples = training_groups(ds.corpus, queries, ds.qrels, run, args.depth)
    block = args.train_command == "blockrank"
    objective = "blockrank" if block else args.objective
    shared = dict(group_size=args.group_size, batch_size=args.batch_size, lr=args.lr, epochs=args.epochs,
                  max_steps=args.max_steps, seed=args.seed, lora=not args.full, lora_r=args.lora_r,
                  checkpoint_every=args.checkpoint_every, train_layers=args.train_layers, micro_batch=args.micro_batch)
    if block:
        config = RerankTrainConfig(objective=objective, aux_weight=args.aux_weight, aux_temperature=args.aux_temperature, **shared)
        reranker = BlockRanker.from_pretrained(args.model, BlockRankConfig(doc_max_tokens=args.doc_max_tokens,
                                                                           score_layer=args.score_layer))
    else:
        config = RerankTrainConfig(objective=objective, weight=args.weight, direction=args.direction,
                                   temperature=args.temperature, **shared)
        if args.scorer == "qlm":
            from reranker.qlm import QLMConfig, QLMReranker

            reranker = QLMReranker.from_pretrained(args.model, QLMConfig(doc_max_tokens=args.doc_max_tokens))
        else:
            reranker = LLMReranker.from_pretrained(args.model, RerankerConfig(doc_max_tokens=args.doc_max_tokens))
    train_reranker(reranker, examples, args.out, config, resume=args.resume, overwrite=args.overwrite)
    if _main_process():
        print(json.dumps({"model": str(Path(args.out) / "model"), "groups": len(examples), "objective": objective,
                          "kind": reranker.kind}))
    return 0


def cmd_train_retriever(args) -> int:
    import random

    from retriever import examples as ex
    from retriever.encoder import DualEncoder
    from retriever.train import TrainConfig, train

    from .data import load_dataset, resolve_dataset

    check_run_folder(args.out, args.resume, args.overwrite)  # before any data is loaded
    n_neg = args.n_negatives if args.n_negatives is not None else (1 if (args.train_file or args.triples) else 0)
    folder = resolve_dataset(args.data)
    if args.unsupervised:
        from .data import load_corpus_of

        examples = ex.crop_pairs(load_corpus_of(folder), random.Random(args.seed))
        n_neg = 0
    elif args.triples:
        examples = ex.read_triples(args.triples)
    else:
        ds = load_dataset(folder, args.split)
        if args.train_file:
            from .data import load_queries

            examples = ex.read_jsonl_examples(args.train_file, ds.corpus, load_queries(folder / "queries.jsonl")
                                              if (folder / "queries.jsonl").exists() else ds.queries, n_neg)
        else:
            examples = ex.from_qrels(ds.corpus, ds.queries, ds.qrels, n_negatives=n_neg)
    config = TrainConfig(loss=args.loss, temperature=args.temperature, symmetric=args.symmetric, decoupled=args.decoupled,
                         per_query=args.per_query, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         n_negatives=n_neg, lr=args.lr, epochs=args.epochs, max_steps=args.max_steps,
                         warmup_ratio=args.warmup_ratio, seed=args.seed, bf16=args.bf16, lora=args.lora, lora_r=args.lora_r,
                         grad_cache_chunk=args.grad_cache_chunk, embed_chunk=args.embed_chunk, checkpoint_every=args.checkpoint_every,
                         query_max_length=args.query_max_length, doc_max_length=args.doc_max_length,
                         gather_negatives=not args.no_gather_negatives)
    encoder = DualEncoder.from_pretrained(args.model)
    train(encoder, examples, args.out, config, resume=args.resume, overwrite=args.overwrite)
    if _main_process():
        print(json.dumps({"model": str(Path(args.out) / "model"), "examples": len(examples), "loss": args.loss}))
    return 0


def cmd_mine(args) -> int:
    from retriever.mining import MineConfig, mine_negatives, write_mined

    from .data import load_dataset, resolve_dataset

    check_file_target(args.out, args.overwrite)  # the output-path rule, before any work
    ds = load_dataset(resolve_dataset(args.data), args.split)
    config = MineConfig(args.rank_from, args.rank_to, args.max_negatives, args.max_ratio)
    negatives = mine_negatives(ds.corpus, ds.queries, ds.qrels, config, args.index, args.model)
    count = write_mined(args.out, ds.queries, ds.qrels, negatives)
    print(json.dumps({"out": args.out, "queries": count, "negatives": sum(map(len, negatives.values()))}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad arguments exit 2 (argparse, before any work); bad input data, files, models
    (DataError, ValueError, OSError, ModelNotAvailable) print ``densekit: error: ...`` and return 2.
    Anything else (TypeError, AttributeError ...) is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    handlers = {"eval": cmd_eval, "compare": cmd_compare, "data": cmd_data, "index": cmd_index, "search": cmd_search, "train": cmd_train,
                "mine": cmd_mine}
    try:
        return handlers[args.command](args)
    except (DataError, ValueError, OSError, EOFError, ModelNotAvailable) as err:
        print(f"densekit: error: {_describe(err)}", file=sys.stderr)
        return 2


def _describe(err: BaseException) -> str:
    """One line for the user: the message, with the file named for OSErrors that carry one."""
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    return str(err).strip() or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
