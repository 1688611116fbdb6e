"""``densekit`` command line: thin argument parsing over the library functions."""
from __future__ import annotations

import argparse
import json
import sys
import time

from .data import DataError


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="retrieve (and optionally rerank) a BEIR split and print metrics")
    p.add_argument("--data", required=True, help="BEIR folder, or a dataset name under $DENSEKIT_DATA")
    p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="dense encoder (name or folder)")
    p.add_argument("--index", help="dense: reuse this index folder (built there when absent)")
    p.add_argument("--factory", default="Flat", help="dense: FAISS factory string when building an index")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--max-queries", type=int, help="only the first N queries of the split (sorted ids)")
    p.add_argument("--relevance-level", type=int, default=1, help="min grade counted relevant by binary measures")
    p.add_argument("--keep-identical-ids", action="store_true", help="do not drop docs whose id equals the query id")
    p.add_argument("--save-run", help="write the (final) run as a TREC run file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="dataset utilities")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("download", help="download an official BEIR dataset (online only)")
    d.add_argument("name")
    d.add_argument("--out", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densekit", description="dense retrieval and reranking toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_data(sub)
    return parser


def cmd_eval(args) -> int:
    from . import pipeline
    from .data import load_dataset, resolve_dataset, select_queries

    start = time.perf_counter()
    ds = load_dataset(resolve_dataset(args.data), args.split)
    queries = select_queries(ds.queries, args.max_queries)
    run = pipeline.first_stage(args.retriever, ds.corpus, queries, args.top_k, model=args.model,
                               index_dir=args.index, factory=args.factory, batch_size=args.batch_size)
    metric_names = list(dict.fromkeys([*pipeline.DEFAULT_METRICS, f"recall@{args.top_k}", f"map@{args.top_k}"]))
    _, means = pipeline.evaluate(run, ds.qrels, metric_names, args.relevance_level,
                                 ignore_identical_ids=not args.keep_identical_ids, auc_k=args.top_k)
    if args.save_run:
        pipeline.write_run(args.save_run, run, tag=args.retriever)
    result = {"dataset": str(ds.path), "split": args.split, "retriever": args.retriever, **means,
              "num_queries": len(queries), "seconds": round(time.perf_counter() - start, 3)}
    if args.json:
        print(json.dumps(result))
    else:
        print(pipeline.format_table({args.retriever: {k: v for k, v in result.items() if k not in ("dataset", "split", "retriever")}}))
    return 0


def cmd_data(args) -> int:
    from .data import download

    print(download(args.name, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"eval": cmd_eval, "data": cmd_data}
    try:
        return handlers[args.command](args)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"densekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
