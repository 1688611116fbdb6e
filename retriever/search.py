"""Corpus -> index -> run: the dense first stage shared by evaluation, mining and reranking.

``build_index`` encodes the corpus in shards of ``shard_size`` documents, each saved as a ``.npy``
file in ``<out>.partial/`` next to the target; an interrupted build resumes from the shards already
written (same model and corpus fingerprint), and the finished index is saved atomically.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from .encoder import DualEncoder
from .index import BadIndexError, Index, corpus_fingerprint
from .text import doc_text


def index_meta(encoder: DualEncoder, corpus: dict) -> dict:
    return {"model": encoder.name, "pooling": encoder.config.pooling, "normalize": encoder.config.normalize,
            "doc_max_length": encoder.config.doc_max_length, "doc_prefix": encoder.config.doc_prefix,
            "corpus_fingerprint": corpus_fingerprint(corpus), "num_docs": len(corpus)}


def build_index(corpus: dict, encoder: DualEncoder, out: str | Path | None = None, factory: str = "Flat",
                batch_size: int = 64, shard_size: int = 4096, show_progress: bool = True) -> Index:
    """Encode ``corpus`` and build (and, with ``out``, save) an index; resumable through ``<out>.partial``."""
    if not corpus:
        raise BadIndexError("cannot build an index over an empty corpus")
    meta = index_meta(encoder, corpus)
    doc_ids = list(corpus)
    texts = [doc_text(corpus[d]) for d in doc_ids]
    if out is None:
        vectors = encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)
        return Index.build(vectors, doc_ids, factory, meta)

    out = Path(out)
    work = out.with_name(f"{out.name}.partial")
    manifest = {"model": meta["model"], "corpus_fingerprint": meta["corpus_fingerprint"], "shard_size": shard_size,
                "pooling": meta["pooling"], "doc_max_length": meta["doc_max_length"]}
    if work.exists() and _read_manifest(work) != manifest:
        shutil.rmtree(work)  # shards of another corpus or model: start over
    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.json").write_text(json.dumps(manifest))
    shards = []
    for number, start in enumerate(range(0, len(texts), shard_size)):
        path = work / f"shard-{number:05d}.npy"
        if not path.exists():
            if show_progress:
                print(f"encoding docs {start}-{min(start + shard_size, len(texts))} of {len(texts)}", file=sys.stderr, flush=True)
            encoder.encode(texts[start:start + shard_size], batch_size=batch_size, show_progress=show_progress, out=path)
        shards.append(path)
    vectors = np.concatenate([np.load(p) for p in shards]) if len(shards) > 1 else np.load(shards[0])
    index = Index.build(vectors, doc_ids, factory, meta)
    index.save(out)
    shutil.rmtree(work, ignore_errors=True)
    return index


def _read_manifest(work: Path) -> dict | None:
    try:
        return json.loads((work / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def load_or_build_index(corpus: dict, encoder: DualEncoder, index_dir: str | Path | None, factory: str = "Flat",
                        batch_size: int = 64, show_progress: bool = True) -> Index:
    """Reuse ``index_dir`` when it holds this model's index of this very corpus, else build it there."""
    if index_dir is not None and Path(index_dir).is_dir():
        index = Index.load(index_dir, expect_dim=encoder.dim, expect_model=encoder.name)
        if index.meta.get("corpus_fingerprint") != corpus_fingerprint(corpus):
            raise BadIndexError(f"{index_dir}: index was built from another corpus (fingerprint differs); "
                                f"use another --index folder or delete it")
        return index
    return build_index(corpus, encoder, index_dir, factory, batch_size, show_progress=show_progress)


def dense_search(corpus: dict, queries: dict[str, str], k: int, model: str = "sentence-transformers/all-MiniLM-L6-v2",
                 index_dir: str | Path | None = None, factory: str = "Flat", batch_size: int = 64,
                 encoder: DualEncoder | None = None, show_progress: bool = True) -> dict[str, dict[str, float]]:
    """Top-``k`` dense run for ``queries`` over ``corpus`` (index built or reused)."""
    encoder = encoder or DualEncoder.from_pretrained(model)
    index = load_or_build_index(corpus, encoder, index_dir, factory, batch_size, show_progress)
    query_ids = list(queries)
    vectors = encoder.encode([queries[q] for q in query_ids], is_query=True, batch_size=batch_size)
    return index.search_run(query_ids, vectors, k)
