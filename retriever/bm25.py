"""Lexical baseline: BM25 on bm25s (Lucene variant, k1=1.5, b=0.75), English stopwords + Snowball stemmer.

Documents are indexed as ``title + " " + text``; the corpus may be a BEIR dict or a memory-mapped Arrow
``datasets.Dataset`` (tokenised in slices). ``bm25_search`` returns a BEIR run
(``{query_id: {doc_id: score}}``) with the top ``k`` documents of each query.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import BM25Config
from densekit.core.types import Corpus, Queries, Run


@dataclass
class BM25Index:
    """A bm25s retriever plus the row -> doc id map."""

    config: BM25Config
    doc_ids: list[str]
    retriever: object = field(repr=False)
    stemmer: object = field(repr=False)

    @classmethod
    def build(cls, corpus, config: BM25Config | None = None, show_progress: bool = False,
              batch_size: int = 10_000) -> "BM25Index":
        """Index ``corpus``: a BEIR dict, or a ``datasets.Dataset`` (``_id``, ``title``, ``text``) read in slices of
        ``batch_size`` rows, so only token ids (never the texts) are held; both give the same index."""
        import bm25s
        import Stemmer
        from bm25s.tokenization import Tokenizer

        from .shards import CorpusRows

        config = config or BM25Config()
        if not len(corpus):
            raise ValueError("cannot build a BM25 index over an empty corpus")
        stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
        tokenizer = Tokenizer(stopwords=config.stopwords, stemmer=stemmer)
        rows = CorpusRows(corpus)
        doc_ids, token_ids = [], []
        for start in range(0, len(rows), batch_size):
            ids, texts = rows.rows(start, min(start + batch_size, len(rows)))
            doc_ids.extend(ids)
            token_ids.extend(tokenizer.streaming_tokenize(texts, update_vocab=True))
        retriever = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        retriever.index(tokenizer.to_tokenized_tuple(token_ids), show_progress=show_progress)
        return cls(config=config, doc_ids=doc_ids, retriever=retriever, stemmer=stemmer)

    def search(self, queries: Queries, k: int = 100, show_progress: bool = False) -> Run:
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
        run: Run = {q: {} for q in query_ids}
        known = [i for i, query in enumerate(tokens) if query]
        if not known:
            return run
        rows, scores = self.retriever.retrieve([tokens[i] for i in known], k=k, show_progress=show_progress)
        for i, doc_rows, doc_scores in zip(known, np.asarray(rows), np.asarray(scores)):
            run[query_ids[i]] = {self.doc_ids[r]: float(s) for r, s in zip(doc_rows, doc_scores) if s > 0}
        return run


def bm25_search(corpus: Corpus, queries: Queries, k: int = 100, config: BM25Config | None = None) -> Run:
    """Build a BM25 index over ``corpus`` and return the top-``k`` run for ``queries``."""
    return BM25Index.build(corpus, config).search(queries, k)
