"""Training examples for dual encoders and how batches are drawn from them.

An example is ``{"query": str, "positives": [str, ...], "negatives": [str, ...]}`` (texts). Sources:

- BEIR train qrels + corpus (``from_qrels``): positives are the docs with grade >= 1;
- a JSONL file (``read_jsonl_examples``), one ``{"query" | "query_id", "positives", "negatives"}`` a
  line, entries being doc ids when a corpus is given (``densekit mine`` writes this), texts otherwise,
  optionally with teacher scores ``"positive_scores"`` / ``"negative_scores"`` aligned with the lists (an
  example then carries the same two keys; the distillation losses train on them);
- MS MARCO-style triples, ``query<TAB>positive<TAB>negative`` a line (``read_triples``);
- no labels at all (``crop_pairs``, after Contriever): two independent random crops of one document;
- a first-stage run (``training_groups``): qrels positives + the run's top ``depth`` minus positives.

``batches`` turns examples into a deterministic sequence of batches for a seed: the same seed gives
the same order, so a resumed run sees exactly the data it would have seen.
"""
from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from densekit.core.io import DataError, lines, read_jsonl
from densekit.core.text import doc_text
from densekit.core.types import Qrels, Queries, Run


@dataclass
class Batch:
    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]  # [B][n]
    positive_scores: list[float] | None = None  # [B] teacher scores of the chosen positives (when examples carry them)
    negative_scores: list[list[float]] | None = None  # [B][n] of the chosen negatives

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, rows: slice) -> "Batch":
        """The batch's rows ``rows`` (a slice): a process's share of a global batch."""
        scored = self.positive_scores is not None
        return Batch(self.queries[rows], self.positives[rows], self.negatives[rows],
                     self.positive_scores[rows] if scored else None, self.negative_scores[rows] if scored else None)


SCORE_KEYS = ("positive_scores", "negative_scores")  # teacher scores, aligned with "positives" / "negatives"


class TrainDataError(DataError):
    """Unusable training data; the message names the file and line where there is one."""


def _clean(examples: list[dict], what: str, n_negatives: int) -> list[dict]:
    """Drop examples without positives (or without negatives when hard negatives are asked for), with counts."""
    no_pos = sum(1 for e in examples if not e["positives"])
    kept = [e for e in examples if e["positives"]]
    no_neg = 0
    if n_negatives > 0:
        no_neg = sum(1 for e in kept if not e["negatives"])
        kept = [e for e in kept if e["negatives"]]
    if no_pos or no_neg:
        warnings.warn(f"{what}: skipped {no_pos} example(s) with no positives and {no_neg} with no negatives", stacklevel=3)
    if not kept:
        raise TrainDataError(f"{what}: no usable training examples")
    return kept


def from_qrels(corpus: dict, queries: dict[str, str], qrels: dict, negatives: dict[str, list[str]] | None = None,
               n_negatives: int = 0, relevance_level: int = 1) -> list[dict]:
    """Examples from BEIR qrels; ``negatives`` optionally maps query id -> doc ids (e.g. mined)."""
    examples, missing = [], 0
    for qid in sorted(qrels):
        if qid not in queries:
            missing += 1
            continue
        pos_ids = [d for d, g in qrels[qid].items() if g >= relevance_level]
        missing += sum(1 for d in pos_ids if d not in corpus)
        neg_ids = [d for d in (negatives or {}).get(qid, []) if d in corpus and d not in qrels[qid]]
        examples.append({"query": queries[qid], "positives": [doc_text(corpus[d]) for d in pos_ids if d in corpus],
                         "negatives": [doc_text(corpus[d]) for d in neg_ids]})
    if missing:
        warnings.warn(f"qrels: skipped {missing} query or doc id(s) absent from queries/corpus", stacklevel=2)
    return _clean(examples, "qrels", n_negatives)


def read_jsonl_examples(path: str | Path, corpus: dict | None = None, queries: dict[str, str] | None = None,
                        n_negatives: int = 0) -> list[dict]:
    """Read the JSONL training format; with ``corpus``, list entries are doc ids (absent ones skipped and counted).

    A line: ``{"query": text | "query_id": id, "positives": [...], "negatives": [...]}``, optionally with teacher
    scores (for ``--loss margin-mse`` / ``kl``; ignored by the other losses): ``"positive_scores"`` and
    ``"negative_scores"``, lists of finite numbers aligned with ``positives`` / ``negatives`` (the teacher's score
    of ``(query, positives[k])`` is ``positive_scores[k]``), both or neither, e.g.
    ``{"query_id": "q1", "positives": ["d1"], "negatives": ["d7", "d9"], "positive_scores": [9.1],
    "negative_scores": [2.3, -0.4]}``. A score goes with its document (dropped with it when the document is
    absent from the corpus). A length that differs from its list's, a score that is not a finite number, or
    one of the two keys without the other is a ``TrainDataError`` naming the file and line.
    """
    path = Path(path)
    examples, missing = [], 0
    for number, obj in read_jsonl(path, required=("positives",)):
        if "query" in obj:
            query = str(obj["query"])
        elif queries is not None and str(obj.get("query_id")) in queries:
            query = queries[str(obj["query_id"])]
        else:
            raise TrainDataError(f"{path}:{number}: needs 'query' text (or a 'query_id' known to the queries)")
        scored = [key in obj for key in SCORE_KEYS]
        if any(scored) and not all(scored):
            given, absent = SCORE_KEYS if scored[0] else SCORE_KEYS[::-1]
            raise TrainDataError(f"{path}:{number}: {given!r} without {absent!r}: teacher scores need both")
        example = {"query": query}
        for key, score_key in zip(("positives", "negatives"), SCORE_KEYS):
            entries = obj.get(key) or []
            if not isinstance(entries, list):
                raise TrainDataError(f"{path}:{number}: {key!r} must be a list")
            scores = _teacher_scores(obj[score_key], len(entries), key, score_key, f"{path}:{number}") if all(scored) \
                else None
            if corpus is not None:
                missing += sum(1 for d in entries if str(d) not in corpus)
                kept = [i for i, d in enumerate(entries) if str(d) in corpus]
                entries = [doc_text(corpus[str(entries[i])]) for i in kept]
                scores = [scores[i] for i in kept] if scores is not None else None
            example[key] = [str(e) for e in entries]
            if scores is not None:
                example[score_key] = scores
        examples.append(example)
    if missing:
        warnings.warn(f"{path}: skipped {missing} doc id(s) absent from the corpus", stacklevel=2)
    return _clean(examples, str(path), n_negatives)


def _teacher_scores(values, count: int, key: str, score_key: str, where: str) -> list[float]:
    """``values`` as floats, checked: a list of ``count`` finite numbers (``TrainDataError`` at ``where`` otherwise)."""
    if not isinstance(values, list):
        raise TrainDataError(f"{where}: {score_key!r} must be a list of numbers aligned with {key!r}")
    if len(values) != count:
        raise TrainDataError(f"{where}: {len(values)} {score_key!r} for {count} {key!r}: one teacher score per document")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrainDataError(f"{where}: {score_key!r} holds {value!r}: teacher scores must be finite numbers")
    return [float(v) for v in values]


def require_teacher_scores(examples: list[dict], loss: str) -> None:
    """``TrainDataError`` unless every example carries teacher scores (``positive_scores`` / ``negative_scores``),
    which ``loss`` (a distillation loss) trains on; meant to run before any model loads."""
    bare = sum(1 for e in examples if not all(key in e for key in SCORE_KEYS))
    if bare:
        raise TrainDataError(f"--loss {loss} distils teacher scores, but {bare} of {len(examples)} training example(s) "
                             f"carry none: give a training JSONL whose every line has 'positive_scores' and "
                             f"'negative_scores' (aligned with 'positives' / 'negatives')")


def read_triples(path: str | Path) -> list[dict]:
    """MS MARCO-style ``query<TAB>positive<TAB>negative`` text triples (a header-less TSV)."""
    path = Path(path)
    examples = []
    for number, line in lines(path):
        line = line.rstrip("\r\n")
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise TrainDataError(f"{path}:{number}: expected query, positive, negative separated by tabs, got {len(parts)} field(s)")
        examples.append({"query": parts[0], "positives": [parts[1]], "negatives": [parts[2]]})
    return _clean(examples, str(path), 0)


def crop_pairs(corpus: dict, rng: random.Random, min_ratio: float = 0.1, max_ratio: float = 0.5,
               min_words: int = 4) -> list[dict]:
    """Contriever's independent cropping: two random word spans of each document form a positive pair.

    Each span covers a uniformly drawn ratio in [min_ratio, max_ratio] of the document's words (at
    least ``min_words``), starting at a uniform position. Documents shorter than ``min_words`` are skipped.
    """
    examples = []
    for doc in corpus.values():
        words = doc_text(doc).split()
        if len(words) < min_words:
            continue
        crops = []
        for _ in range(2):
            length = max(min_words, int(round(rng.uniform(min_ratio, max_ratio) * len(words))))
            start = rng.randint(0, len(words) - length)
            crops.append(" ".join(words[start:start + length]))
        examples.append({"query": crops[0], "positives": [crops[1]], "negatives": []})
    if not examples:
        raise TrainDataError("unsupervised: no document has enough words to crop")
    return examples


def batches(examples: list[dict], batch_size: int, n_negatives: int, seed: int, epoch: int) -> list[Batch]:
    """One epoch's batches: examples shuffled by ``(seed, epoch)``, one positive and ``n_negatives``
    negatives drawn per example (with replacement only when an example has fewer). The last partial
    batch is dropped, so every step sees ``batch_size`` queries. Teacher scores (when every example of the
    batch has them) follow their documents into ``Batch.positive_scores`` / ``negative_scores``."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = [examples[i] for i in order[start:start + batch_size]]
        pos = [rng.choice(range(len(e["positives"]))) for e in chosen]  # draws as rng.choice(e["positives"])
        neg = [_draw(len(e["negatives"]), n_negatives, rng) for e in chosen]
        scored = all(key in e for e in chosen for key in SCORE_KEYS)
        out.append(Batch(
            queries=[e["query"] for e in chosen],
            positives=[e["positives"][i] for e, i in zip(chosen, pos)],
            negatives=[[e["negatives"][j] for j in js] for e, js in zip(chosen, neg)],
            positive_scores=[e["positive_scores"][i] for e, i in zip(chosen, pos)] if scored else None,
            negative_scores=[[e["negative_scores"][j] for j in js] for e, js in zip(chosen, neg)] if scored else None,
        ))
    return out


def _draw(size: int, n: int, rng: random.Random) -> list[int]:
    """``n`` indices into a pool of ``size``: without replacement when it has enough, else with."""
    if n == 0:
        return []
    pool = range(size)
    return rng.sample(pool, n) if size >= n else [rng.choice(pool) for _ in range(n)]


def training_groups(corpus, queries: Queries, qrels: Qrels, first_stage_run: Run, depth: int = 30,
                    min_negatives: int = 1) -> list[dict]:
    """Reranker/retriever training examples: qrels positives + the first stage's top ``depth`` minus positives."""
    from .mining import select_negatives

    negatives = select_negatives(first_stage_run, qrels, 0, depth)
    return from_qrels(corpus, queries, qrels, negatives, n_negatives=min_negatives)


def mix_sources(sources: list[list[dict]], mix: str = "proportional", seed: int = 0) -> list[dict]:
    """One training set from several datasets' examples. ``proportional``: every example once (a dataset weighs by
    its size); ``even``: every dataset contributes as many examples as the largest one, a smaller one repeated whole
    as often as fits and topped up by a seeded sample of itself, so each dataset weighs the same."""
    if mix not in ("proportional", "even"):
        raise ValueError(f"unknown mix {mix!r}: use proportional or even")
    if mix == "proportional" or len(sources) == 1:
        return [e for source in sources for e in source]
    largest = max(map(len, sources))
    out = []
    for i, source in enumerate(sources):
        if not source:
            continue
        whole, rest = divmod(largest, len(source))
        out += source * whole + random.Random(seed * 7919 + i).sample(source, rest)
    return out
