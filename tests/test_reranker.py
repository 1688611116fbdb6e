import json
import math

import pytest
import torch

from densekit.reranker.base import register, rerank
from densekit.reranker.config import RerankerConfig, RerankTrainConfig
from densekit.reranker.pointwise import LLMReranker, TokenError
from densekit.reranker.pointwise import gradient_weights, group_losses
from densekit.reranker.train import make_groups, train_reranker

DOCS = ["cats purr when they are happy", "", "dogs bark " * 300, "fish swim"]


@pytest.fixture
def reranker(tiny_causal_lm):
    return LLMReranker.from_pretrained(str(tiny_causal_lm), RerankerConfig(doc_max_tokens=40))


def manual_score(rr, query, doc):
    ids = torch.tensor([rr.encode_pair(query, doc)])
    with torch.no_grad():
        logits = rr.model(input_ids=ids).logits[0, -1]
    return (logits[rr.yes_id] - logits[rr.no_id]).item()


def test_score_equals_manual_forward_despite_padding(reranker):
    scores = reranker.score("why do cats purr", DOCS, batch_size=3)
    for doc, score in zip(DOCS, scores):
        assert score == pytest.approx(manual_score(reranker, "why do cats purr", doc), abs=1e-4)


def test_document_truncated_never_query_or_answer_slot(reranker):
    long_ids = reranker.encode_pair("a query", DOCS[2])
    short_ids = reranker.encode_pair("a query", "dogs bark")
    suffix = reranker.tokenizer.encode(reranker._prefix_suffix[1], add_special_tokens=False)
    assert long_ids[-len(suffix):] == suffix and short_ids[-len(suffix):] == suffix
    assert len(long_ids) - len(short_ids) == 40 - len(reranker.tokenizer.encode("dogs bark", add_special_tokens=False))


def test_chat_template_is_used_when_present(tiny_causal_lm):
    rr = LLMReranker.from_pretrained(str(tiny_causal_lm))
    rr.tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    rr._prefix_suffix = rr._template_parts()
    assert rr._prefix_suffix[0].startswith("<user>") and rr._prefix_suffix[1].endswith("<assistant>")


def test_tokenizer_without_single_token_answers(tiny_causal_lm):
    with pytest.raises(TokenError, match="'zzyzxq' is not a single token.*splits into"):
        LLMReranker.from_pretrained(str(tiny_causal_lm), RerankerConfig(yes="zzyzxq"))


def test_rerank_skips_missing_ids_and_keeps_tail(reranker):
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(DOCS)}
    run = {"q": {"d0": 4.0, "d1": 3.0, "ghost": 2.5, "d2": 2.0, "d3": 1.0}}
    with pytest.warns(UserWarning, match="skipped 1 doc id"):
        out = reranker.rerank(run, corpus, {"q": "cats"}, top_k=3, show_progress=False)
    ranking = sorted(out["q"], key=out["q"].get, reverse=True)
    assert set(ranking[:2]) == {"d0", "d1"} and ranking[2:] == ["d2", "d3"]


LOGITS = torch.tensor([[2.0, 0.5], [0.0, 1.0], [1.0, 1.0], [0.5, -0.5], [0.2, 0.1], [3.0, 0.0]])  # 2 groups of 3


def test_sft_and_cl_losses_hand_computed():
    s = [1.5, -1.0, 0.0, 1.0, 0.1, 3.0]
    labels = [1, 0, 0, 1, 0, 0]
    bce = [-(l * math.log(1 / (1 + math.exp(-x))) + (1 - l) * math.log(1 - 1 / (1 + math.exp(-x)))) for x, l in zip(s, labels)]
    sft = group_losses(LOGITS, 3, RerankTrainConfig(objective="sft"))
    assert sft.item() == pytest.approx(sum(bce) / 6, abs=1e-6)
    y = [[2.0, 0.0, 1.0], [0.5, 0.2, 3.0]]
    tau = 0.5
    cl = sum(-g[0] / tau + math.log(sum(math.exp(v / tau) for v in g)) for g in y) / 2
    assert group_losses(LOGITS, 3, RerankTrainConfig(objective="cl", temperature=tau)).item() == pytest.approx(cl, abs=1e-6)


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_unified_loss_reproduces_each_objective_gradient(objective):
    a = LOGITS.clone().requires_grad_()
    b = LOGITS.clone().requires_grad_()
    group_losses(a, 3, RerankTrainConfig(objective=objective, temperature=0.5)).backward()
    unified = RerankTrainConfig(objective="unified", weight=objective, direction=objective, temperature=0.5)
    group_losses(b, 3, unified).backward()
    # SFT's per-pair mean is over all pairs, the unified surrogate sums per group: same direction, scale group_size
    scale = 3.0 if objective == "sft" else 1.0
    torch.testing.assert_close(a.grad * scale, b.grad)


def test_gradient_weights():
    w = gradient_weights(LOGITS, 3, "sft")
    assert w[0, 0].item() == pytest.approx(1 - 1 / (1 + math.exp(-1.5)))
    assert w[0, 1].item() == pytest.approx(1 / (1 + math.exp(1.0)))
    cl = gradient_weights(LOGITS, 3, "cl")
    assert cl[0].sum().item() == pytest.approx(2 * cl[0, 0].item())  # softmax: positive deficit = negatives' mass


def toy_groups():
    return [{"query": f"q{t}", "positives": [f"{t} {t} {t}"], "negatives": [f"{o} {o}" for o in "abcdefg" if o != t]}
            for t in "abcdefg"]


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_training_lowers_loss_and_adapter_roundtrip(tiny_causal_lm, tmp_path, objective):
    rr = LLMReranker.from_pretrained(str(tiny_causal_lm))
    config = RerankTrainConfig(objective=objective, group_size=3, batch_size=2, lr=5e-3, epochs=6, lora_r=4,
                               warmup_ratio=0.0, checkpoint_every=100)
    groups = make_groups(toy_groups(), 3, 0, 0)
    ids = [rr.encode_pair(q, d) for q, docs in groups for d in docs]
    with torch.no_grad():
        before = group_losses(rr.answer_logits(ids), 3, config).item()
    trained = train_reranker(rr, toy_groups(), tmp_path / "out", config, show_progress=False)
    with torch.no_grad():
        after = group_losses(trained.answer_logits(ids), 3, config).item()
    assert after < before
    log = [json.loads(l) for l in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert {"w_sft_pos", "w_cl_neg"} <= set(log[0])
    loaded = LLMReranker.load(tmp_path / "out" / "model")
    assert loaded.score("qa", ["a a a", "b b"]) == trained.score("qa", ["a a a", "b b"])
    meta = json.loads((tmp_path / "out" / "model" / "reranker.json").read_text())
    assert meta["base_model"] == str(tiny_causal_lm) and not meta["full_model"]


def test_cli_train_reranker_then_rerank_eval(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys):
    from densekit.eval.cli import main

    assert main(["train", "reranker", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_causal_lm),
                 "--retriever-model", str(tiny_bert), "--objective", "cl", "--group-size", "3", "--batch-size", "1",
                 "--epochs", "2", "--out", str(tmp_path / "rr")]) == 0
    assert json.loads(capsys.readouterr().out)["groups"] == 2
    from conftest import cli_rerank_problem

    # the saved run ranks the top 3 by the trained reranker's own scores (computed here from the saved folder)
    assert cli_rerank_problem(tiny_beir, tmp_path, capsys, str(tmp_path / "rr" / "model")) is None
    assert cli_rerank_problem(tiny_beir, tmp_path, capsys, str(tiny_causal_lm)) is None  # zero-shot prompt


@register
class ConstantScores:
    """A test kind whose scores are all equal: it orders nothing."""

    kind = "constant-test"

    @classmethod
    def from_pretrained(cls, target):
        return cls()

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        return [[0.5] * len(docs) for _, docs in groups]

    def rerank(self, *args, **kwargs):
        return rerank(self, *args, **kwargs)


def test_constant_reranker_fails_the_cli_rerank_check(tiny_beir, tmp_path, capsys):
    """The check of the CLI rerank tests catches a reranker with constant scores (recall@6 alone would not)."""
    from conftest import cli_rerank_problem

    problem = cli_rerank_problem(tiny_beir, tmp_path, capsys, "constant-test:anything")
    assert problem is not None and "ties" in problem


def test_rerank_order_check_on_hand_made_runs():
    from conftest import rerank_order_problem

    class ByLength:
        def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
            return [[float(len(d)) for d in docs] for _, docs in groups]

    corpus = {d: {"title": "", "text": t} for d, t in (("a", "xxx"), ("b", "x"), ("c", "xx"), ("t", "xxxx"))}
    first, queries = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "t": 0.0}}, {"q": "query"}
    assert rerank_order_problem(first, {"q": {"a": 3.0, "c": 2.0, "b": 1.0, "t": 0.0}}, corpus, queries, ByLength(), 3) is None
    assert "saved order" in rerank_order_problem(first, {"q": {"a": 3.0, "c": 2.0, "b": 1.0, "t": 5.0}}, corpus, queries,
                                                 ByLength(), 3)  # the tail must stay below the reranked docs
    assert "not the reranker's" in rerank_order_problem(first, {"q": {"b": 3.0, "c": 2.0, "a": 1.0, "t": 0.0}}, corpus,
                                                        queries, ByLength(), 3)
