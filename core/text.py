"""How a document becomes one string (shared by the encoder, BM25 and the rerankers)."""
from __future__ import annotations


def doc_text(doc: dict[str, str] | str, sep: str = " ") -> str:
    """``title + sep + text`` (beir's convention), stripped; a plain string is returned unchanged."""
    if isinstance(doc, str):
        return doc
    return f"{doc.get('title') or ''}{sep}{doc.get('text') or ''}".strip()
