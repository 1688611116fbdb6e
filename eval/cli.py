"""``densekit`` command line: thin argument parsing over the library functions."""
from __future__ import annotations

import argparse
import json
import sys
import time

from retriever.models import ModelNotAvailable

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


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="dense index utilities")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("build", help="encode a corpus and save a FAISS index folder (resumable)")
    b.add_argument("--data", required=True, help="BEIR folder or dataset name under $DENSEKIT_DATA")
    b.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    b.add_argument("--out", required=True)
    b.add_argument("--factory", default="Flat", help="FAISS factory string: Flat, HNSW32, IVF256,Flat, IVF256,PQ32 ...")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--shard-size", type=int, default=4096, help="docs per resumable encoding shard")


def _add_search(sub) -> None:
    p = sub.add_parser("search", help="search a saved index with a text query")
    p.add_argument("--index", required=True)
    p.add_argument("--query", required=True, action="append", help="repeat for several queries")
    p.add_argument("--model", help="encoder (default: the model the index was built with)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int)
    p.add_argument("--ef-search", type=int)
    p.add_argument("--json", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densekit", description="dense retrieval and reranking toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_data(sub)
    _add_index(sub)
    _add_search(sub)
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


def cmd_index(args) -> int:
    from retriever.encoder import DualEncoder
    from retriever.search import build_index

    from .data import load_corpus_of

    corpus = load_corpus_of(args.data)
    encoder = DualEncoder.from_pretrained(args.model)
    index = build_index(corpus, encoder, args.out, args.factory, args.batch_size, args.shard_size)
    print(json.dumps({"index": args.out, "ntotal": index.ntotal, "dim": index.dim, "factory": index.factory}))
    return 0


def cmd_search(args) -> int:
    from retriever.encoder import DualEncoder
    from retriever.index import Index

    index = Index.load(args.index)
    encoder = DualEncoder.from_pretrained(args.model or index.meta["model"])
    index = Index.load(args.index, expect_dim=encoder.dim, expect_model=None if args.model else encoder.name)
    index.set_params(nprobe=args.nprobe, ef_search=args.ef_search)
    ids, scores = index.search(encoder.encode(args.query, is_query=True), args.k)
    results = [{"query": q, "hits": [{"id": d, "score": float(s)} for d, s in zip(doc_ids, row)]}
               for q, doc_ids, row in zip(args.query, ids, scores)]
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
    else:
        for result in results:
            print(f"query: {result['query']}")
            for rank, hit in enumerate(result["hits"], start=1):
                print(f"{rank:>4}  {hit['score']:.4f}  {hit['id']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"eval": cmd_eval, "data": cmd_data, "index": cmd_index, "search": cmd_search}
    try:
        return handlers[args.command](args)
    except (DataError, ValueError, FileNotFoundError, ModelNotAvailable) as err:
        print(f"densekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
