"""The plain data every densekit module passes around: the BEIR dict formats.

Ids are strings. A corpus bigger than RAM may instead be a memory-mapped ``datasets.Dataset`` with
columns ``_id``, ``title``, ``text`` (``densekit.eval.data.load_corpus_arrow``); functions that accept one say so.
"""
from __future__ import annotations

Corpus = dict[str, dict[str, str]]      # doc id -> {"title": str, "text": str}
Queries = dict[str, str]                # query id -> text
Qrels = dict[str, dict[str, int]]       # query id -> {doc id: graded relevance}
Run = dict[str, dict[str, float]]       # query id -> {doc id: score}, higher is better
