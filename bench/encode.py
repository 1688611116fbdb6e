"""densekit DualEncoder.encode vs SentenceTransformer.encode: throughput and retrieval parity in one run.

Same model (all-MiniLM-L6-v2), texts (title + text of the corpus), max length 256, batch size and
threads; the corpus is timed in slices that both encode, alternating which goes first. Prints one JSON line per dataset: docs/s of each, the ratio, and nDCG@10 of densekit's
Index (Flat) vs sentence-transformers embeddings in a raw FAISS IndexFlatIP.

    python bench/encode.py --datasets scifact nfcorpus
"""
from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
import torch

from densekit.eval.data import load_dataset, resolve_dataset
from densekit.eval.metrics import evaluate
from densekit.retriever.encoder import DualEncoder
from densekit.retriever.index import Index
from densekit.core.models import cache_dir, resolve
from densekit.core.text import doc_text

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--slice", type=int, default=512, help="docs per alternating timing slice")
    parser.add_argument("--max-docs", type=int, help="only the first N docs (throughput only; nDCG then not comparable)")
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    ours = DualEncoder.from_pretrained(MODEL)
    st = SentenceTransformer(resolve(MODEL), device="cpu")
    st.max_seq_length = ours.config.doc_max_length
    for name in args.datasets:
        ds = load_dataset(resolve_dataset(name))
        doc_ids = list(ds.corpus)[: args.max_docs]
        texts = [doc_text(ds.corpus[d]) for d in doc_ids]
        qids = list(ds.queries)
        qtexts = [ds.queries[q] for q in qids]
        # the corpus in slices of --slice docs; each slice is encoded by both, in alternating order, so
        # load from other processes and thermal drift hit both sides alike
        parts = {"densekit": [], "st": []}
        secs = {"densekit": 0.0, "st": 0.0}
        encoders = {"densekit": lambda t: ours.encode(t, batch_size=args.batch_size),
                    "st": lambda t: st.encode(t, batch_size=args.batch_size, convert_to_numpy=True)}
        for i, start in enumerate(range(0, len(texts), args.slice)):
            chunk = texts[start:start + args.slice]
            for label in (("densekit", "st") if i % 2 == 0 else ("st", "densekit")):
                out, seconds = timed(lambda: encoders[label](chunk))
                parts[label].append(out)
                secs[label] += seconds
        emb = {label: np.concatenate(chunks) for label, chunks in parts.items()}
        cache_dir().mkdir(parents=True, exist_ok=True)
        np.save(cache_dir() / f"bench-{name}-minilm.npy", emb["densekit"])  # reused by bench/search.py
        q_ours = ours.encode(qtexts, is_query=True)
        q_st = st.encode(qtexts, batch_size=args.batch_size, convert_to_numpy=True)
        run_ours = Index.build(emb["densekit"], doc_ids).search_run(qids, q_ours, 100)
        raw = faiss.IndexFlatIP(emb["st"].shape[1])
        raw.add(np.ascontiguousarray(emb["st"], dtype=np.float32))
        scores, rows = raw.search(np.ascontiguousarray(q_st, dtype=np.float32), 100)
        run_st = {q: {doc_ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for q, rr, ss in zip(qids, rows, scores)}
        _, m_ours = evaluate(run_ours, ds.qrels, ["ndcg@10", "recall@100"])
        _, m_st = evaluate(run_st, ds.qrels, ["ndcg@10", "recall@100"])
        cos = (emb["densekit"] * emb["st"]).sum(1) / np.linalg.norm(emb["densekit"], axis=1) / np.linalg.norm(emb["st"], axis=1)
        print(json.dumps({
            "bench": "encode", "dataset": name, "docs": len(texts), "threads": torch.get_num_threads(),
            "densekit_docs_per_s": round(len(texts) / secs["densekit"], 2), "st_docs_per_s": round(len(texts) / secs["st"], 2),
            "ratio_densekit_over_st": round(secs["st"] / secs["densekit"], 3), "min_cosine": float(cos.min()),
            "ndcg@10_densekit": round(m_ours["ndcg@10"], 4), "ndcg@10_st_faiss": round(m_st["ndcg@10"], 4),
            "ndcg@10_abs_diff": round(abs(m_ours["ndcg@10"] - m_st["ndcg@10"]), 5),
            "recall@100_densekit": round(m_ours["recall@100"], 4), "recall@100_st_faiss": round(m_st["recall@100"], 4),
        }), flush=True)


if __name__ == "__main__":
    main()
