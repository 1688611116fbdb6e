"""A reranker as the teacher of a retriever: its scores on mined training examples, and the false negatives it finds.

``teacher_scores(reranker, rows, corpus)`` adds ``positive_scores`` / ``negative_scores`` to mined rows
(``{"query", "positives": [ids], "negatives": [ids]}``, the JSONL training format), aligned with the ids: the
reranker scores each query's positives and negatives as one group (``score_groups``; wrap the reranker in a
``score_cache.ScoreCache`` to resume an interrupted run). ``denoise(rows)`` drops every negative the teacher scores
above all of its query's positives (RocketQA's denoised hard negatives: such a "negative" is more likely an unjudged
relevant document than a negative), with the count dropped.
"""
from __future__ import annotations

import math

from densekit.core.text import doc_text


def teacher_scores(reranker, rows: list[dict], corpus: dict, batch_size: int = 8, show_progress: bool = True,
                   chunk: int = 16) -> list[dict]:
    """``rows`` with the teacher's scores of their documents (ids absent from the corpus are dropped first, as
    training drops them); scored ``chunk`` queries at a time so that a cached teacher keeps what it finished."""
    from tqdm.auto import tqdm

    rows = [{**r, "positives": [d for d in r["positives"] if d in corpus],
             "negatives": [d for d in r["negatives"] if d in corpus]} for r in rows]
    out = []
    bar = tqdm(total=len(rows), desc=f"teacher {getattr(reranker, 'kind', '')}", disable=not show_progress)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        groups = [(r["query"], [doc_text(corpus[d]) for d in r["positives"] + r["negatives"]]) for r in part]
        for row, scores in zip(part, reranker.score_groups(groups, batch_size=batch_size, show_progress=False)):
            scores = [float(s) for s in scores]
            if not all(math.isfinite(s) for s in scores):
                raise ValueError(f"the teacher gave a non-finite score for query {row.get('query_id', row['query'])!r}")
            n = len(row["positives"])
            out.append({**row, "positive_scores": scores[:n], "negative_scores": scores[n:]})
        bar.update(len(part))
    bar.close()
    return out


def denoise(rows: list[dict]) -> tuple[list[dict], int]:
    """``(rows, dropped)``: each row without the negatives its teacher scores above every one of its positives."""
    out, dropped = [], 0
    for row in rows:
        best = max(row["positive_scores"], default=-math.inf)
        keep = [i for i, s in enumerate(row["negative_scores"]) if s <= best]
        dropped += len(row["negatives"]) - len(keep)
        out.append({**row, "negatives": [row["negatives"][i] for i in keep],
                    "negative_scores": [row["negative_scores"][i] for i in keep]})
    return out, dropped
