"""Reranker scores kept on disk, so that an interrupted scoring run resumes and two systems of one reranker (alone,
fused, at another fusion weight) score each prompt once.

``ScoreCache(reranker, folder)`` behaves like ``reranker`` (its ``kind``, ``modes`` ...) but answers
``score_groups`` from ``<folder>/<kind>-<identity>.jsonl`` where it can: one line ``{"key", "scores"}`` per
scored group, ``key`` = sha256 of (mode, query, every document text in order) — the whole group, because a listwise
kind (BlockRank) scores a document with the others in its prompt. ``identity`` = sha256 of the reranker's kind,
class, config and weights (``models.weights_hash``): another model, adapter or setting never reads these scores.
Missing groups are scored ``chunk`` at a time and appended (flushed) after each chunk; a line cut by a killed
process is ignored on the next read.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Sequence

from densekit.core.io import check_writable


def reranker_identity(reranker) -> str:
    """What a reranker computes: sha256 (16 hex digits) of its kind, class, config and weights."""
    import torch

    from densekit.core.models import weights_hash

    config = getattr(reranker, "config", None)
    parts = {"kind": getattr(reranker, "kind", None), "class": type(reranker).__qualname__,
             "config": asdict(config) if is_dataclass(config) else repr(config)}
    model = getattr(reranker, "model", None)
    if isinstance(model, torch.nn.Module):
        parts["weights"] = weights_hash(model)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_cache_folder(folder: str | os.PathLike, flag: str = "--score-cache") -> None:
    """Refuse, before any work, a score folder densekit cannot keep scores in (a file in its place, no write access)."""
    from densekit.core.io import DataError

    if Path(folder).exists() and not Path(folder).is_dir():
        raise DataError(f"{flag} {folder}: a file is in the way of the score folder; give a folder")
    check_writable(Path(folder) / "scores.jsonl")


def group_key(query: str, docs: Sequence[str], mode: str | None) -> str:
    h = hashlib.sha256(f"{mode}\0{query}".encode())
    for doc in docs:
        h.update(b"\0" + doc.encode())
    return h.hexdigest()


class ScoreCache:
    """``reranker`` with its scores cached in ``folder`` (module docstring)."""

    def __init__(self, reranker, folder: str | os.PathLike, chunk: int = 8):
        self.inner, self.chunk = reranker, chunk
        kind = getattr(reranker, "kind", type(reranker).__name__)
        self.path = Path(folder) / f"{kind}-{reranker_identity(reranker)}.jsonl"
        check_writable(self.path)
        self.scores: dict[str, list[float]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.scores[row["key"]] = [float(s) for s in row["scores"]]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a killed process: that group is scored again

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_groups(self, groups: Sequence[tuple[str, list[str]]], batch_size: int = 8, show_progress: bool = False,
                     mode: str | None = None) -> list[list[float]]:
        from tqdm.auto import tqdm

        keys = [group_key(query, docs, mode) for query, docs in groups]
        todo = list(dict.fromkeys(i for i, key in enumerate(keys) if key not in self.scores))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(total=len(todo), desc=f"rerank {getattr(self.inner, 'kind', '')} (cached: "
                  f"{len(groups) - len(todo)})", disable=not show_progress or not todo, unit="query") as bar:
            for start in range(0, len(todo), self.chunk):
                rows = [i for i in todo[start:start + self.chunk] if keys[i] not in self.scores]
                scored = self.inner.score_groups([groups[i] for i in rows], batch_size=batch_size, show_progress=False,
                                                 mode=mode)
                with open(self.path, "a", encoding="utf-8") as fh:
                    for i, scores in zip(rows, scored):
                        self.scores[keys[i]] = [float(s) for s in scores]
                        fh.write(json.dumps({"key": keys[i], "scores": self.scores[keys[i]]}) + "\n")
                    fh.flush()
                bar.update(len(rows))
        return [list(self.scores[key]) for key in keys]

    def rerank(self, run: dict, corpus: dict, queries: dict[str, str], top_k: int = 20, batch_size: int = 8,
               show_progress: bool = True, mode: str | None = None) -> dict[str, dict[str, float]]:
        """``reranker.base.rerank`` through the cache."""
        from .base import rerank

        return rerank(self, run, corpus, queries, top_k, batch_size, show_progress, mode)
