"""The reranker interface: one generic rerank(), the kinds registry (reranker/kinds.py), specs and folder kinds."""
import json

import pytest

from densekit.reranker import kinds
from densekit.reranker.base import load_reranker, register, rerank
from densekit.reranker.blockrank import BlockRanker
from densekit.reranker.pointwise import LLMReranker
from densekit.reranker.qlm import QLMReranker
from densekit.core.io import DataError


@register
class ShortestFirst:
    """A test kind living outside ``reranker/``: scores = minus the document's length."""

    kind = "shortest-first-test"

    @classmethod
    def from_pretrained(cls, target):
        return cls()

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        return [[-float(len(d)) for d in docs] for _, docs in groups]

    def rerank(self, *args, **kwargs):
        return rerank(self, *args, **kwargs)


@pytest.mark.parametrize("prefix, cls", [("qlm:", QLMReranker), ("", LLMReranker), ("pointwise:", LLMReranker),
                                          ("blockrank:", BlockRanker)])
def test_spec_prefix_picks_the_kind(tiny_causal_lm, prefix, cls):
    assert type(load_reranker(prefix + str(tiny_causal_lm))) is cls


def test_saved_folder_names_its_kind_and_a_mismatch_is_refused(tiny_causal_lm, tmp_path):
    QLMReranker.from_pretrained(str(tiny_causal_lm)).save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "reranker.json").read_text())["kind"] == "qlm"
    assert type(load_reranker(str(tmp_path / "saved"))) is QLMReranker
    with pytest.raises(DataError, match="holds a 'qlm' reranker, not 'blockrank'"):
        load_reranker(f"blockrank:{tmp_path / 'saved'}")


@pytest.mark.parametrize("prefix", ["", "blockrank:", "qlm:"])
def test_encoder_folder_is_not_a_reranker(tiny_bert, prefix):
    with pytest.raises(DataError, match="not a causal LM|dual encoder"):
        load_reranker(prefix + str(tiny_bert))


def test_generic_rerank_keeps_tail_and_skips_missing_ids():
    corpus = {"long": {"title": "", "text": "a b c d e f"}, "mid": {"title": "", "text": "a b c"},
              "short": {"title": "", "text": "a"}, "tail": {"title": "", "text": "z"}}
    run = {"q": {"long": 4.0, "ghost": 3.5, "mid": 3.0, "short": 2.0, "tail": 1.0}, "empty": {}}
    with pytest.warns(UserWarning, match="skipped 1 doc id"):
        out = rerank(ShortestFirst(), run, corpus, {"q": "x", "empty": "y"}, top_k=4, show_progress=False)
    assert sorted(out["q"], key=out["q"].get, reverse=True) == ["short", "mid", "long", "tail"]
    assert out["empty"] == {}


def test_a_new_kind_runs_through_the_cli_with_no_change_to_eval(tiny_beir, capsys):
    from densekit.eval.cli import main

    assert "shortest-first-test" in kinds.KINDS
    base = ["eval", "--data", str(tiny_beir), "--retriever", "bm25", "--top-k", "6", "--json", "--save-run"]
    assert main(base + [str(tiny_beir / "plain.trec")]) == 0
    assert main(base + [str(tiny_beir / "short.trec"), "--reranker", "shortest-first-test:anything",
                        "--rerank-top-k", "6"]) == 0
    from densekit.eval.runfile import read_run
    from densekit.core.text import doc_text
    from densekit.eval.data import load_corpus

    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    for qid, docs in read_run(tiny_beir / "short.trec").items():
        ranked = sorted(docs, key=docs.get, reverse=True)
        lengths = [len(doc_text(corpus[d])) for d in ranked]
        assert lengths == sorted(lengths), qid  # the new kind's order, not BM25's
    assert read_run(tiny_beir / "plain.trec") != read_run(tiny_beir / "short.trec")
