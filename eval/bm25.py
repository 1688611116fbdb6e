"""Lexical baseline: BM25 on bm25s (Lucene variant, k1=1.5, b=0.75), English stopwords + Snowball stemmer.

Documents are indexed as ``title + " " + text``. ``bm25_search`` returns a BEIR run
(``{query_id: {doc_id: score}}``) with the top ``k`` documents of each query.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retriever.text import doc_text

Corpus = dict[str, dict[str, str]]


@dataclass
class BM25Config:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    stemmer: str | None = "english"


@dataclass
class BM25Index:
    """A bm25s retriever plus the row -> doc id map."""

    config: BM25Config
    doc_ids: list[str]
    retriever: object = field(repr=False)
    stemmer: object = field(repr=False)

    @classmethod
    def build(cls, corpus: Corpus, config: BM25Config | None = None, show_progress: bool = False) -> "BM25Index":
        import bm25s
        import Stemmer

        config = config or BM25Config()
        if not corpus:
            raise ValueError("cannot build a BM25 index over an empty corpus")
        stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        doc_ids = list(corpus)
        tokens = bm25s.tokenize([doc_text(corpus[d]) for d in doc_ids], stopwords=config.stopwords,
                                stemmer=stemmer, show_progress=show_progress)
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokens, show_progress=show_progress)
        return cls(config=config, doc_ids=doc_ids, retriever=retriever, stemmer=stemmer)

    def search(self, queries: dict[str, str], k: int = 100, show_progress: bool = False) -> dict[str, dict[str, float]]:
        """Top ``k`` documents of each query; documents with score 0 (no shared term) are left out."""
        import bm25s

        if not queries:
            return {}
        query_ids = list(queries)
        tokens = bm25s.tokenize([queries[q] for q in query_ids], stopwords=self.config.stopwords,
                                stemmer=self.stemmer, return_ids=False, show_progress=False)
        vocab = self.retriever.vocab_dict
        # bm25s needs at least one known token per query; a query with none retrieves nothing.
        tokens = [[t for t in query if t in vocab] for query in tokens]
        k = min(k, len(self.doc_ids))
        run: dict[str, dict[str, float]] = {q: {} for q in query_ids}
        known = [i for i, query in enumerate(tokens) if query]
        if not known:
            return run
        rows, scores = self.retriever.retrieve([tokens[i] for i in known], k=k, show_progress=show_progress)
        for i, doc_rows, doc_scores in zip(known, np.asarray(rows), np.asarray(scores)):
            run[query_ids[i]] = {self.doc_ids[r]: float(s) for r, s in zip(doc_rows, doc_scores) if s > 0}
        return run


def bm25_search(corpus: Corpus, queries: dict[str, str], k: int = 100, config: BM25Config | None = None) -> dict[str, dict[str, float]]:
    """Build a BM25 index over ``corpus`` and return the top-``k`` run for ``queries``."""
    return BM25Index.build(corpus, config).search(queries, k)
