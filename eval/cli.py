"""``densekit`` command line: thin argument parsing over the library functions."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from retriever.models import ModelNotAvailable

from .data import DataError


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="retrieve (and optionally rerank) a BEIR split and print metrics")
    p.add_argument("--data", required=True, help="BEIR folder, or a dataset name under $DENSEKIT_DATA")
    p.add_argument("--retriever", choices=["bm25", "dense"], default="bm25")
    p.add_argument("--model", nargs="+", default=["sentence-transformers/all-MiniLM-L6-v2"],
                   help="dense encoder(s) (names or folders); several models are evaluated side by side")
    p.add_argument("--index", help="dense, one model: reuse this index folder (built there when absent)")
    p.add_argument("--factory", default="Flat", help="dense: FAISS factory string when building an index")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--split", default="test")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--max-queries", type=int, help="only the first N queries of the split (sorted ids)")
    p.add_argument("--relevance-level", type=int, default=1, help="min grade counted relevant by binary measures")
    p.add_argument("--keep-identical-ids", action="store_true", help="do not drop docs whose id equals the query id")
    p.add_argument("--save-run", help="write the (final) run as a TREC run file")
    p.add_argument("--reranker", help="rerank with a trained reranker folder, a causal LM name (zero-shot pointwise "
                   "prompt) or blockrank:<folder or model>")
    p.add_argument("--rerank-mode", choices=["attention", "decode"], default="attention",
                   help="BlockRank: rank by attention mass, or put the decoded answer first")
    p.add_argument("--rerank-top-k", type=int, default=20)
    p.add_argument("--rerank-batch-size", type=int, default=8)
    p.add_argument("--roc", help="draw the ROC curves (top-k candidates) of every evaluated system into this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object per system instead of a table")


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
    r.add_argument("--temperature", type=float, default=defaults.temperature)
    r.add_argument("--symmetric", action="store_true", help="InfoNCE: add the doc->query term")
    r.add_argument("--decoupled", action="store_true", help="InfoNCE: DEXML decoupled softmax")
    r.add_argument("--per-query", action="store_true", help="MW: pair positives only within their query")
    r.add_argument("--batch-size", type=int, default=defaults.batch_size)
    r.add_argument("--grad-accum", type=int, default=defaults.grad_accum)
    r.add_argument("--n-negatives", type=int, default=None, help="hard negatives per query (default 1 with a negatives file, else 0)")
    r.add_argument("--lr", type=float, default=defaults.lr)
    r.add_argument("--epochs", type=int, default=defaults.epochs)
    r.add_argument("--max-steps", type=int)
    r.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    r.add_argument("--seed", type=int, default=defaults.seed)
    r.add_argument("--bf16", action="store_true")
    r.add_argument("--lora", action="store_true")
    r.add_argument("--lora-r", type=int, default=defaults.lora_r)
    r.add_argument("--grad-cache-chunk", type=int, help="GradCache: encode in chunks of this many texts")
    r.add_argument("--embed-chunk", type=int, help="documents per forward, sorted by length (default 8 on CPU, the batch on GPU)")
    r.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    r.add_argument("--query-max-length", type=int)
    r.add_argument("--doc-max-length", type=int)
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    _add_train_reranker(tsub)


def _add_train_reranker(tsub) -> None:
    from reranker.train import RerankTrainConfig

    d = RerankTrainConfig()
    r = tsub.add_parser("reranker", help="train the pointwise LLM reranker (SFT or CL objective, LoRA)")
    _reranker_data_args(r, d)
    r.add_argument("--objective", choices=["sft", "cl", "unified"], default=d.objective)
    r.add_argument("--weight", choices=["sft", "cl"], default=d.weight, help="unified: gradient weight source")
    r.add_argument("--direction", choices=["sft", "cl"], default=d.direction, help="unified: gradient direction source")
    r.add_argument("--temperature", type=float, default=d.temperature)
    r.add_argument("--group-size", type=int, default=d.group_size)
    r.add_argument("--doc-max-tokens", type=int, default=192)
    b = tsub.add_parser("blockrank", help="train BlockRank (LM loss on the answer id + attention InfoNCE, LoRA)")
    _reranker_data_args(b, d)
    b.add_argument("--group-size", type=int, default=20, help="documents per prompt (1 positive + negatives)")
    b.add_argument("--aux-weight", type=float, default=d.aux_weight)
    b.add_argument("--aux-temperature", type=float, default=d.aux_temperature)
    b.add_argument("--score-layer", type=int, help="0-based layer read for attention scores (default 60%% depth)")
    b.add_argument("--doc-max-tokens", type=int, default=128)


def _reranker_data_args(r, d) -> None:
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    r.add_argument("--out", required=True)
    r.add_argument("--first-stage", choices=["dense", "bm25"], default="dense", help="where hard negatives come from")
    r.add_argument("--retriever-model", default="sentence-transformers/all-MiniLM-L6-v2")
    r.add_argument("--index", help="dense index folder of the corpus (built there when absent)")
    r.add_argument("--depth", type=int, default=30, help="negatives: first-stage top-depth minus positives")
    r.add_argument("--batch-size", type=int, default=d.batch_size)
    r.add_argument("--lr", type=float, default=d.lr)
    r.add_argument("--epochs", type=int, default=d.epochs)
    r.add_argument("--max-steps", type=int)
    r.add_argument("--max-queries", type=int, help="only the first N training queries (sorted ids)")
    r.add_argument("--lora-r", type=int, default=d.lora_r)
    r.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    r.add_argument("--seed", type=int, default=d.seed)
    r.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    r.add_argument("--resume", action="store_true")


def _add_mine(sub) -> None:
    p = sub.add_parser("mine", help="mine hard negatives for training (writes the JSONL training format)")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--index", help="densekit index folder of this corpus (dense mining); without it BM25 is used")
    p.add_argument("--model", help="encoder for the queries (default: the index's model)")
    p.add_argument("--out", required=True)
    p.add_argument("--rank-from", type=int, default=10, help="first rank kept (0-based); skipping the top avoids false negatives")
    p.add_argument("--rank-to", type=int, default=50)
    p.add_argument("--max-negatives", type=int, default=20)
    p.add_argument("--max-ratio", type=float, help="drop candidates scoring above this x the lowest positive score (dense only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="densekit", description="dense retrieval and reranking toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_data(sub)
    _add_index(sub)
    _add_search(sub)
    _add_train(sub)
    _add_mine(sub)
    return parser


def cmd_eval(args) -> int:
    from . import pipeline
    from .data import load_dataset, resolve_dataset, select_queries

    start = time.perf_counter()
    ds = load_dataset(resolve_dataset(args.data), args.split)
    queries = select_queries(ds.queries, args.max_queries)
    models = args.model if args.retriever == "dense" else [None]
    if args.index and len(models) > 1:
        raise ValueError("--index serves one model; drop it to compare several models")
    metric_names = list(dict.fromkeys([*pipeline.DEFAULT_METRICS, f"recall@{args.top_k}", f"map@{args.top_k}"]))
    runs, rows = {}, {}
    for model in models:
        t0 = time.perf_counter()
        run = pipeline.first_stage(args.retriever, ds.corpus, queries, args.top_k, model=model,
                                   index_dir=args.index, factory=args.factory, batch_size=args.batch_size)
        label = args.retriever if model is None else f"dense:{model}"
        if args.reranker:
            run = pipeline.rerank_stage(run, ds.corpus, queries, args.reranker, args.rerank_top_k, args.rerank_batch_size,
                                        args.rerank_mode)
            label += f">{args.reranker}@{args.rerank_top_k}"
        _, means = pipeline.evaluate(run, ds.qrels, metric_names, args.relevance_level,
                                     ignore_identical_ids=not args.keep_identical_ids, auc_k=args.top_k)
        runs[label] = pipeline.drop_identical_ids(run) if not args.keep_identical_ids else run
        rows[label] = {**means, "num_queries": len(queries), "seconds": round(time.perf_counter() - (start if len(rows) == 0 else t0), 3)}
        if args.save_run:
            suffix = "" if len(models) == 1 else f".{len(rows)}"
            pipeline.write_run(args.save_run + suffix, run, tag=label.replace(" ", "_"))
    if args.roc:
        from .plots import plot_roc

        plot_roc(runs, ds.qrels, args.roc, k=args.top_k, relevance_level=args.relevance_level)
    if args.json:
        for label, values in rows.items():
            print(json.dumps({"dataset": str(ds.path), "split": args.split, "retriever": args.retriever,
                              **({"model": label.split(":", 1)[1]} if ":" in label else {}), **values}))
    else:
        print(pipeline.format_table(rows))
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


def cmd_train(args) -> int:
    if args.train_command in ("reranker", "blockrank"):
        return cmd_train_reranker(args)
    return cmd_train_retriever(args)


def cmd_train_reranker(args) -> int:
    from reranker.blockrank import BlockRankConfig, BlockRanker
    from reranker.pointwise import LLMReranker, RerankerConfig
    from reranker.train import RerankTrainConfig, train_reranker

    from . import pipeline
    from .data import load_dataset, resolve_dataset, select_queries

    ds = load_dataset(resolve_dataset(args.data), args.split)
    queries = select_queries(ds.queries, args.max_queries)
    run = pipeline.first_stage(args.first_stage, ds.corpus, queries, args.depth, model=args.retriever_model,
                               index_dir=args.index)
    examples = pipeline.training_groups(ds.corpus, queries, ds.qrels, run, args.depth)
    block = args.train_command == "blockrank"
    objective = "blockrank" if block else args.objective
    shared = dict(group_size=args.group_size, batch_size=args.batch_size, lr=args.lr, epochs=args.epochs,
                  max_steps=args.max_steps, seed=args.seed, lora=not args.full, lora_r=args.lora_r,
                  checkpoint_every=args.checkpoint_every)
    if block:
        config = RerankTrainConfig(objective=objective, aux_weight=args.aux_weight, aux_temperature=args.aux_temperature, **shared)
        reranker = BlockRanker.from_pretrained(args.model, BlockRankConfig(doc_max_tokens=args.doc_max_tokens,
                                                                           score_layer=args.score_layer))
    else:
        config = RerankTrainConfig(objective=objective, weight=args.weight, direction=args.direction,
                                   temperature=args.temperature, **shared)
        reranker = LLMReranker.from_pretrained(args.model, RerankerConfig(doc_max_tokens=args.doc_max_tokens))
    train_reranker(reranker, examples, args.out, config, resume=args.resume)
    print(json.dumps({"model": str(Path(args.out) / "model"), "groups": len(examples), "objective": objective}))
    return 0


def cmd_train_retriever(args) -> int:
    import random

    from retriever import examples as ex
    from retriever.encoder import DualEncoder
    from retriever.train import TrainConfig, train

    from .data import load_dataset, resolve_dataset

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
                         query_max_length=args.query_max_length, doc_max_length=args.doc_max_length)
    encoder = DualEncoder.from_pretrained(args.model)
    train(encoder, examples, args.out, config, resume=args.resume)
    print(json.dumps({"model": str(Path(args.out) / "model"), "examples": len(examples), "loss": args.loss}))
    return 0


def cmd_mine(args) -> int:
    from retriever.mining import dense_positive_scores, select_negatives, write_mined

    from .data import load_dataset, resolve_dataset

    ds = load_dataset(resolve_dataset(args.data), args.split)
    positive_scores = None
    if args.index:
        from retriever.encoder import DualEncoder
        from retriever.index import Index
        from retriever.index import corpus_fingerprint

        index = Index.load(args.index)
        encoder = DualEncoder.from_pretrained(args.model or index.meta["model"])
        index = Index.load(args.index, expect_dim=encoder.dim)
        if index.meta.get("corpus_fingerprint") not in (None, corpus_fingerprint(ds.corpus)):
            raise ValueError(f"{args.index}: index was built from another corpus than {ds.path}")
        qids = list(ds.queries)
        vectors = encoder.encode([ds.queries[q] for q in qids], is_query=True)
        run = index.search_run(qids, vectors, args.rank_to)
        positive_scores = dense_positive_scores(index, qids, vectors, ds.qrels)
    else:
        from .bm25 import bm25_search

        run = bm25_search(ds.corpus, ds.queries, args.rank_to)
    negatives = select_negatives(run, ds.qrels, args.rank_from, args.rank_to, args.max_negatives,
                                 positive_scores, args.max_ratio)
    count = write_mined(args.out, ds.queries, ds.qrels, negatives)
    print(json.dumps({"out": args.out, "queries": count, "negatives": sum(map(len, negatives.values()))}))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"eval": cmd_eval, "data": cmd_data, "index": cmd_index, "search": cmd_search, "train": cmd_train,
                "mine": cmd_mine}
    try:
        return handlers[args.command](args)
    except (DataError, ValueError, FileNotFoundError, ModelNotAvailable) as err:
        print(f"densekit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
