"""Training examples for dual encoders and how batches are drawn from them.

An example is ``{"query": str, "positives": [str, ...], "negatives": [str, ...]}`` (texts). Sources:

- BEIR train qrels + corpus (``from_qrels``): positives are the docs with grade >= 1;
- a JSONL file (``read_jsonl_examples``), one ``{"query" | "query_id", "positives", "negatives"}`` a
  line, entries being doc ids when a corpus is given (``densekit mine`` writes this), texts otherwise;
- MS MARCO-style triples, ``query<TAB>positive<TAB>negative`` a line (``read_triples``);
- no labels at all (``crop_pairs``, after Contriever): two independent random crops of one document;
- a first-stage run (``training_groups``): qrels positives + the run's top ``depth`` minus positives.

``batches`` turns examples into a deterministic sequence of batches for a seed: the same seed gives
the same order, so a resumed run sees exactly the data it would have seen.
"""
from __future__ import annotations

import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from .io import DataError, lines, read_jsonl
from .text import doc_text
from .types import Qrels, Queries, Run


@dataclass
class Batch:
    queries: list[str]
    positives: list[str]
    negatives: list[list[str]]  # [B][n]

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, rows: slice) -> "Batch":
        """The batch's rows ``rows`` (a slice): a process's share of a global batch."""
        return Batch(self.queries[rows], self.positives[rows], self.negatives[rows])


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
    """Read the JSONL training format; with ``corpus``, list entries are doc ids (absent ones skipped and counted)."""
    path = Path(path)
    examples, missing = [], 0
    for number, obj in read_jsonl(path, required=("positives",)):
        if "query" in obj:
            query = str(obj["query"])
        elif queries is not None and str(obj.get("query_id")) in queries:
            query = queries[str(obj["query_id"])]
        else:
            raise TrainDataError(f"{path}:{number}: needs 'query' text (or a 'query_id' known to the queries)")
        lists = {}
        for key in ("positives", "negatives"):
            entries = obj.get(key) or []
            if not isinstance(entries, list):
                raise TrainDataError(f"{path}:{number}: {key!r} must be a list")
            if corpus is not None:
                missing += sum(1 for d in entries if str(d) not in corpus)
                entries = [doc_text(corpus[str(d)]) for d in entries if str(d) in corpus]
            lists[key] = [str(e) for e in entries]
        examples.append({"query": query, **lists})
    if missing:
        warnings.warn(f"{path}: skipped {missing} doc id(s) absent from the corpus", stacklevel=2)
    return _clean(examples, str(path), n_negatives)


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
    batch is dropped, so every step sees ``batch_size`` queries."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        chosen = [examples[i] for i in order[start:start + batch_size]]
        out.append(Batch(
            queries=[e["query"] for e in chosen],
            positives=[rng.choice(e["positives"]) for e in chosen],
            negatives=[_draw(e["negatives"], n_negatives, rng) for e in chosen],
        ))
    return out


def _draw(pool: list[str], n: int, rng: random.Random) -> list[str]:
    if n == 0:
        return []
    return rng.sample(pool, n) if len(pool) >= n else [rng.choice(pool) for _ in range(n)]


def training_groups(corpus, queries: Queries, qrels: Qrels, first_stage_run: Run, depth: int = 30,
                    min_negatives: int = 1) -> list[dict]:
    """Reranker/retriever training examples: qrels positives + the first stage's top ``depth`` minus positives."""
    from .mining import select_negatives

    negatives = select_negatives(first_stage_run, qrels, 0, depth)
    return from_qrels(corpus, queries, qrels, negatives, n_negatives=min_negatives)
