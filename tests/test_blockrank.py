"""BlockRank: masks vs a loop-built reference, positions, efficient vs reference path, aux loss by hand,
early stop at the scoring layer, training, save/load, decode and rerank."""
import json
import math

import numpy as np
import pytest
import torch

from densekit.reranker.blockrank import BlockPrompt, BlockRanker, blockrank_groups, dense_mask, doc_masks
from densekit.reranker.config import BlockRankConfig, BlockRankTrainOptions, RerankTrainConfig
from densekit.reranker.train import train_reranker

DOCS = ["cats are small animals that purr and sleep most of the day", "dogs bark",
        "the stock market fell today by a large number of points", "a kitten is a young cat"]


def loop_mask(instr: int, docs: list[int], tail: int) -> torch.Tensor:
    """The pattern written out token by token (independent of ``dense_mask``)."""
    spans, start = [("instr", 0, instr)], instr
    for i, n in enumerate(docs):
        spans.append((f"doc{i}", start, start + n))
        start += n
    spans.append(("query", start, start + tail))
    T = start + tail
    block = {t: name for name, a, b in spans for t in range(a, b)}
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            if block[i] == "query" or block[j] == "instr" or block[i] == block[j]:
                m[i, j] = True
    return m


def ragged_prompt() -> BlockPrompt:
    return BlockPrompt(instruction=[1, 2, 3], docs=[[10, 11, 12, 13], [20], [30, 31, 32]], query=[40, 41], answer=[50])


def test_dense_mask_matches_loop_reference_on_ragged_blocks():
    p = ragged_prompt()
    assert torch.equal(dense_mask(p), loop_mask(3, [4, 1, 3], 3))


def test_doc_masks_are_the_dense_rows_of_each_doc_block():
    p = ragged_prompt()
    dense, batched = dense_mask(p), doc_masks(p)
    L0, lens = 3, [4, 1, 3]
    assert batched.shape == (3, 4, 3 + 4)
    start = L0
    for k, n in enumerate(lens):
        for r in range(n):
            row = dense[start + r]
            expected = torch.cat([row[:L0], row[start:start + n], torch.zeros(4 - n, dtype=torch.bool)])
            assert torch.equal(batched[k, r], expected)
            # nothing outside the instruction and the own block
            outside = row.clone()
            outside[:L0] = False
            outside[start:start + n] = False
            assert not outside.any()
        start += n


def test_position_ids_restart_per_doc_and_query_follows_longest_doc():
    assert ragged_prompt().positions() == [0, 1, 2, 3, 4, 5, 6, 3, 3, 4, 5, 7, 8, 9]


@pytest.fixture(scope="module")
def ranker(tiny_causal_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    return BlockRanker(model, AutoTokenizer.from_pretrained(tiny_causal_lm), BlockRankConfig(doc_max_tokens=12, score_layer=0),
                       name=str(tiny_causal_lm))


@pytest.fixture(scope="module")
def deep_ranker():
    """4 layers, GQA, scoring layer 1: the reference's hidden states after 2 layers are comparable."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from densekit.core.models import resolve

    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024, pad_token_id=tok.pad_token_id)
    return BlockRanker(LlamaForCausalLM(cfg).eval(), tok, BlockRankConfig(doc_max_tokens=12, score_layer=1))


@torch.no_grad()
@pytest.mark.parametrize("doc_batch", [32, 2, 3])
def test_efficient_path_matches_reference(deep_ranker, doc_batch, monkeypatch):
    r = deep_ranker
    monkeypatch.setattr(r.config, "doc_batch", doc_batch)  # one batch; even batches; a ragged last batch
    p = r.build_prompt("what is a cat", DOCS, answer=3)
    assert len({len(d) for d in p.docs}) > 1  # ragged
    eff, ref = r.forward_blocks(p), r.reference_forward(p)
    mass = r.doc_mass(p, eff["capture"])
    assert torch.allclose(mass, ref["mass"], atol=1e-5)
    assert mass.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert eff["hidden"].shape == ref["hidden"].shape
    assert torch.allclose(eff["hidden"], ref["hidden"], atol=1e-4)
    full_eff, full_ref = r.forward_blocks(p, n_layers=4), r.reference_forward(p, n_layers=4)
    assert torch.allclose(r._base().model.norm(full_eff["hidden"]), full_ref["hidden"], atol=1e-4)


def test_scoring_never_runs_layers_above_the_scoring_layer(deep_ranker):
    layers = deep_ranker._base().model.layers

    def boom(*args):
        raise AssertionError("layer above the scoring layer ran")

    handles = [layer.register_forward_pre_hook(boom) for layer in layers[2:]]
    try:
        scores = deep_ranker.score("what is a cat", DOCS)
    finally:
        for h in handles:
            h.remove()
    assert len(scores) == len(DOCS) and sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_aux_loss_equals_hand_computed_value(deep_ranker, monkeypatch):
    r = deep_ranker
    p = r.build_prompt("what is a cat", DOCS[:3], answer=1)
    fixed = torch.tensor([0.5, 0.3, 0.2])
    monkeypatch.setattr(r, "doc_mass", lambda prompt, capture: fixed)
    total, parts = r.loss(p, positive=1, aux_weight=0.1, temperature=0.1)
    # logits 5, 3, 2; positive 3: log(e^5 + e^3 + e^2) - 3
    hand = math.log(math.exp(5) + math.exp(3) + math.exp(2)) - 3
    assert parts["aux"] == pytest.approx(hand, abs=1e-5)
    assert total.item() == pytest.approx(parts["lm"] + 0.1 * hand, abs=1e-5)


def test_lm_part_is_cross_entropy_of_the_answer_tokens(deep_ranker):
    r = deep_ranker
    p = r.build_prompt("what is a cat", DOCS[:3], answer=2)
    with torch.no_grad():
        _, parts = r.loss(p, positive=2)
        ref = r.reference_forward(p, n_layers=4)["hidden"][0]  # normed last hidden states of the tail
        logits = r._base().lm_head(ref).float()
    n_q = len(p.query)
    hand = torch.nn.functional.cross_entropy(logits[n_q - 1:n_q - 1 + len(p.answer)], torch.tensor(p.answer))
    assert parts["lm"] == pytest.approx(hand.item(), abs=1e-5)


def test_groups_are_shuffled_reproducibly_and_answer_tracks_the_positive():
    groups = [("q", ["pos", "n1", "n2", "n3", "n4"])] * 3
    a, b = blockrank_groups(groups, 7, 3), blockrank_groups(groups, 7, 3)
    assert a == b
    for _, docs, answer in a:
        assert docs[answer] == "pos" and sorted(docs) == sorted(groups[0][1])
    assert len({answer for _, _, answer in blockrank_groups(groups * 10, 7, 3)}) > 1


def test_training_lowers_loss_and_saved_adapter_reproduces_scores(tiny_causal_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    r = BlockRanker(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), AutoTokenizer.from_pretrained(tiny_causal_lm),
                    BlockRankConfig(doc_max_tokens=8, score_layer=1), name=str(tiny_causal_lm))
    examples = [{"query": f"topic {i} question", "positives": [f"topic {i} answer text"],
                 "negatives": [f"unrelated {j} words" for j in range(5)]} for i in range(4)]
    config = RerankTrainConfig(objective="blockrank", group_size=4, batch_size=2, lr=5e-3, epochs=8, lora=True,
                               lora_r=8, checkpoint_every=100)
    options = BlockRankTrainOptions(aux_weight=1.0)
    model = train_reranker(r, examples, tmp_path / "br", config, show_progress=False, options=options)
    log = [json.loads(line) for line in (tmp_path / "br" / "train_log.jsonl").read_text().splitlines()]
    assert {"lm", "aux", "hit"} <= set(log[0])
    first, last = sum(x["loss"] for x in log[:3]) / 3, sum(x["loss"] for x in log[-3:]) / 3
    assert last < first
    docs = ["topic 1 answer text", "unrelated 2 words", "unrelated 3 words"]
    before = model.score("topic 1 question", docs)
    loaded = BlockRanker.load(tmp_path / "br" / "model")
    assert loaded.score("topic 1 question", docs) == pytest.approx(before, abs=1e-6)
    meta = json.loads((tmp_path / "br" / "model" / "reranker.json").read_text())
    assert meta["kind"] == "blockrank" and meta["config"]["score_layer"] == 1


def test_objective_must_fit_the_model(ranker, tmp_path):
    ex = [{"query": "q", "positives": ["p"], "negatives": ["n"]}]
    with pytest.raises(ValueError, match="blockrank"):
        train_reranker(ranker, ex, tmp_path, RerankTrainConfig(objective="sft", group_size=2, batch_size=1))


def test_rerank_attention_and_decode_modes(ranker, monkeypatch):
    from densekit.core.runs import rank
    from densekit.core.text import doc_text

    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(DOCS)}
    run = {"q1": {"d0": 3.0, "d1": 2.0, "d2": 1.0, "d3": 0.5, "gone": 0.7}}
    with pytest.warns(UserWarning, match="1 doc id"):
        out = ranker.rerank(run, corpus, {"q1": "cat"}, top_k=4, show_progress=False)
    assert set(out["q1"]) == {"d0", "d1", "d2", "d3"}
    # attention mode: the scores are the attention masses of BlockRanker.score on the first-stage top docs, in
    # that order; the run ranks by them, and the doc below top_k stays under the reranked ones
    head = ranker.score("cat", [corpus[d] for d in ("d0", "d1", "d2")])
    assert len({round(h, 6) for h in head}) == 3 and sum(head) == pytest.approx(1.0, abs=1e-5)
    assert [out["q1"][d] for d in ("d0", "d1", "d2")] == pytest.approx(head, abs=1e-6)
    assert rank(out["q1"]) == sorted(("d0", "d1", "d2"), key=lambda d: -head[int(d[1])]) + ["d3"]
    # decode mode: the decoded doc first (decode() called directly on the same docs), the rest in first-stage order
    first = {"q1": {"d0": 4.0, "d1": 3.0, "d2": 2.0, "d3": 1.0}}
    order = ["d0", "d1", "d2", "d3"]
    chosen = ranker.decode("cat", [corpus[d] for d in order])
    dec = ranker.rerank(first, corpus, {"q1": "cat"}, top_k=4, mode="decode", show_progress=False)
    expected = order if chosen is None else [order[chosen]] + [d for d in order if d != order[chosen]]
    assert rank(dec["q1"]) == expected
    # a decoded answer below the top: moved first, the others keep their order, the tail stays last; decode() sees
    # the top docs' texts in first-stage order
    calls = []
    monkeypatch.setattr(ranker, "decode", lambda query, docs, **kw: calls.append((query, list(docs))) or 2)
    dec = ranker.rerank(first, corpus, {"q1": "cat"}, top_k=3, mode="decode", show_progress=False)
    assert rank(dec["q1"]) == ["d2", "d0", "d1", "d3"]
    assert calls == [("cat", [doc_text(corpus[d]) for d in ("d0", "d1", "d2")])]
    monkeypatch.setattr(ranker, "decode", lambda query, docs, **kw: None)  # no listed doc named: first-stage order
    assert rank(ranker.rerank(first, corpus, {"q1": "cat"}, top_k=4, mode="decode", show_progress=False)["q1"]) == order


def test_bad_input(ranker):
    with pytest.raises(ValueError, match="at least one document"):
        ranker.build_prompt("q", [])
    p = ranker.build_prompt("q", ["word " * 500, ""])
    assert len(p.docs[0]) <= 12 + 20  # content cut to doc_max_tokens, id markers kept
    assert p.docs[1]  # an empty document still has its id markers
    with pytest.raises(ValueError, match="answer"):
        ranker.loss(ranker.build_prompt("q", ["a"]), 0)
    assert ranker.build_prompt("q", ["word " * 8] * 200)  # many documents: their positions restart, no limit
    limit = ranker._base().config.max_position_embeddings
    try:
        ranker._base().config.max_position_embeddings = len(ranker.build_prompt("q", ["word " * 8]).positions()) - 1
        with pytest.raises(ValueError, match="beyond the model's limit"):
            ranker.build_prompt("q", ["word " * 8])
    finally:
        ranker._base().config.max_position_embeddings = limit


@pytest.mark.slow
@torch.no_grad()
def test_paths_agree_on_smollm2():
    from densekit.core.models import ModelNotAvailable

    try:
        r = BlockRanker.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct", BlockRankConfig(doc_max_tokens=32))
    except ModelNotAvailable as e:
        pytest.skip(str(e))
    p = r.build_prompt("what do cats eat", DOCS)
    eff, ref = r.forward_blocks(p), r.reference_forward(p)
    assert torch.allclose(r.doc_mass(p, eff["capture"]), ref["mass"], atol=1e-4)
    assert torch.allclose(eff["hidden"], ref["hidden"], atol=1e-3 * ref["hidden"].abs().max().item())


def test_cli_train_blockrank_then_eval_both_modes(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys):
    from densekit.eval.cli import main

    assert main(["train", "reranker", "--kind", "blockrank", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_causal_lm),
                 "--retriever-model", str(tiny_bert), "--group-size", "3", "--batch-size", "1", "--epochs", "1",
                 "--score-layer", "1", "--doc-max-tokens", "16", "--out", str(tmp_path / "br")]) == 0
    assert json.loads(capsys.readouterr().out)["objective"] == "blockrank"
    from conftest import cli_rerank_problem

    # recall@6 unchanged, and the saved run ranks the top 3 by the reranker's own scores in that mode
    for spec, mode in ((str(tmp_path / "br" / "model"), "attention"), (f"blockrank:{tmp_path / 'br' / 'model'}", "decode"),
                       (f"blockrank:{tiny_causal_lm}", "attention")):
        assert cli_rerank_problem(tiny_beir, tmp_path, capsys, spec, 3, mode) is None


@torch.no_grad()
@pytest.mark.parametrize("signal_tokens, doc_mass, heads", [(0, "mean", None), (2, "mean", [1, 3]), (0, "sum", [2])])
def test_scoring_choices_match_the_dense_reference(deep_ranker, signal_tokens, doc_mass, heads, monkeypatch):
    """Every-query-token signals, per-token means and a head subset: efficient path == dense reference; the
    mean reduction equals the summed mass divided by each document's token count."""
    r = deep_ranker
    for name, value in (("signal_tokens", signal_tokens), ("doc_mass", doc_mass), ("score_heads", heads)):
        monkeypatch.setattr(r.config, name, value)
    p = r.build_prompt("what is a cat", DOCS)
    mass = r.doc_mass(p, r.forward_blocks(p)["capture"])
    assert torch.allclose(mass, r.reference_forward(p)["mass"], atol=1e-5)
    if doc_mass == "mean":
        monkeypatch.setattr(r.config, "doc_mass", "sum")
        summed = r.doc_mass(p, r.forward_blocks(p)["capture"])
        assert torch.allclose(mass, summed / torch.tensor([len(d) for d in p.docs], dtype=summed.dtype), atol=1e-6)


@torch.no_grad()
def test_layer_masses_hold_every_layer_and_choice(deep_ranker, monkeypatch):
    """``layer_masses[l, s, r]`` averaged over heads is the score BlockRank gives with score_layer l and that choice."""
    r = deep_ranker
    masses = r.layer_masses("what is a cat", DOCS)
    assert masses.shape == (r.n_layers, 2, 2, 4, len(DOCS))
    for layer in (0, 3):
        for si, signals in enumerate((2, 0)):
            for ri, reduce in enumerate(("sum", "mean")):
                for name, value in (("score_layer", layer), ("signal_tokens", signals), ("doc_mass", reduce)):
                    monkeypatch.setattr(r.config, name, value)
                expected = torch.tensor(r.score("what is a cat", DOCS))
                assert torch.allclose(masses[layer, si, ri].mean(0), expected, atol=1e-5)


def test_settings_come_from_the_config_then_the_probe_then_the_paper(deep_ranker, monkeypatch):
    from densekit.reranker import blockrank

    r = deep_ranker
    monkeypatch.setattr(r.config, "score_layer", None)
    monkeypatch.setattr(r, "name", "some/model")
    assert (r.score_layer, r.setting("signal_tokens"), r.setting("doc_mass"), r.setting("score_heads")) == (2, 2, "sum", None)
    monkeypatch.setitem(blockrank.PROBED, "some/model", {"score_layer": 1, "doc_mass": "mean", "score_heads": [0, 2]})
    assert (r.score_layer, r.setting("signal_tokens"), r.setting("doc_mass"), r.setting("score_heads")) == (1, 2, "mean", [0, 2])
    monkeypatch.setattr(r.config, "doc_mass", "sum")
    assert r.setting("doc_mass") == "sum"
    monkeypatch.setattr(r.config, "score_layer", 9)
    with pytest.raises(ValueError, match="outside the model's layers 0..3"):
        r.score("q", DOCS)


def test_probe_finds_the_planted_signal():
    """Synthetic masses: at layer 2, summed mass, head 1 ranks each query's relevant document first; every other
    (layer, choice, head) is noise. The probe's best row is that cell with best-k heads, cross-fitted."""
    from densekit.eval.probe import best_setting, probe

    rng = np.random.default_rng(0)
    queries = [f"q{i}" for i in range(12)]
    docs = {q: [f"{q}-d{j}" for j in range(6)] for q in queries}
    qrels = {q: {docs[q][i % 6]: 1} for i, q in enumerate(queries)}
    masses = {}
    for i, q in enumerate(queries):
        m = rng.random((3, 2, 2, 4, 6))
        m[2, 0, 0, 1] = 0.0
        m[2, 0, 0, 1, i % 6] = 1.0
        masses[q] = m
    rows = probe(masses, docs, qrels, k=1)
    assert len(rows) == 3 * 2 * 2 * 2
    best = max(rows, key=lambda r: r["ndcg@10"])
    assert (best["layer"], best["signal"], best["doc_mass"], best["heads"], best["ndcg@10"]) == (2, "last 2", "sum", "best 1", 1.0)
    assert all(r["ndcg@10"] < 1.0 for r in rows if r is not best)
    assert best_setting(rows, masses, docs, qrels, k=1) == {"score_layer": 2, "signal_tokens": 2, "doc_mass": "sum",
                                                             "score_heads": [1]}


def _planted(seed: int, layer: int, head: int, n_queries: int, strength: float = 1.0):
    """Synthetic masses ``[3 layers, 2 signals, 2 reduces, 4 heads, 6 docs]`` whose (layer, last 2, sum, head) cell
    puts ``strength`` on each query's relevant document; everything else is noise in [0, 1)."""
    rng = np.random.default_rng(seed)
    queries = [f"s{seed}q{i}" for i in range(n_queries)]
    docs = {q: [f"{q}-d{j}" for j in range(6)] for q in queries}
    qrels = {q: {docs[q][i % 6]: 1} for i, q in enumerate(queries)}
    masses = {}
    for i, q in enumerate(queries):
        m = rng.random((3, 2, 2, 4, 6))
        m[layer, 0, 0, head] = 0.0
        m[layer, 0, 0, head, i % 6] = strength
        masses[q] = m
    return masses, docs, qrels


def test_pooled_probe_weighs_datasets_equally_and_keeps_each_ones_figure():
    """Guards pooling that weighs datasets by their query count (the 40-query dataset would win) or loses the
    per-dataset optimum: dataset A (40 queries) plants layer 0 / head 2, B and C (8 queries each) plant layer 2 /
    head 1; the equal-weight pool picks B and C's cell, and each row keeps every dataset's own figure."""
    from densekit.eval.probe import best_pooled_setting, pooled_rows, probe

    data = {"A": _planted(1, 0, 2, 40), "B": _planted(2, 2, 1, 8), "C": _planted(3, 2, 1, 8)}
    rows_by = {name: probe(*d, k=1) for name, d in data.items()}
    rows = pooled_rows(rows_by)
    best = max(rows, key=lambda r: r["ndcg@10"])
    assert (best["layer"], best["signal"], best["doc_mass"], best["heads"]) == (2, "last 2", "sum", "best 1")
    for name, own in rows_by.items():
        mine = next(r for r in own if (r["layer"], r["signal"], r["doc_mass"], r["heads"]) == (2, "last 2", "sum", "best 1"))
        assert best["by_dataset"][name] == mine["ndcg@10"]
    assert best["ndcg@10"] == pytest.approx(np.mean(list(best["by_dataset"].values())))
    assert max(rows_by["A"], key=lambda r: r["ndcg@10"])["layer"] == 0  # A alone would choose otherwise
    assert best_pooled_setting(rows, data, k=1) == {"score_layer": 2, "signal_tokens": 2, "doc_mass": "sum",
                                                     "score_heads": [1]}


def test_aux_only_training_never_runs_or_changes_layers_above_the_scoring_layer(tmp_path):
    """4 layers, scoring layer 1: aux-only LoRA lands on layers 0-1 only, layers 2-3 never run in training (a
    forward hook would see them), their weights stay bit-identical, and the attention loss falls."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from densekit.core.models import resolve

    torch.manual_seed(2)
    tok = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    r = BlockRanker(model, tok, BlockRankConfig(doc_max_tokens=8, score_layer=1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(model.model.layers)]
    examples = [{"query": f"topic {i} question", "positives": [f"topic {i} answer text"],
                 "negatives": [f"unrelated {j} words" for j in range(5)]} for i in range(4)]
    config = RerankTrainConfig(objective="blockrank", group_size=4, batch_size=2, lr=5e-3, epochs=6, lora_r=8,
                               checkpoint_every=100)
    options = BlockRankTrainOptions(aux_only=True)
    trained = train_reranker(r, examples, tmp_path / "br", config, show_progress=False, options=options)
    for h in hooks:
        h.remove()
    assert ran and set(ran) == {0, 1}
    names = [n for n, _ in trained.model.named_parameters() if "lora_" in n]
    assert names and all(".layers.0." in n or ".layers.1." in n for n in names)
    after = trained.model.merge_and_unload().state_dict()
    for key in (k for k in before if ".layers.2." in k or ".layers.3." in k):
        assert torch.equal(before[key], after[key]), key
    log = [json.loads(line) for line in (tmp_path / "br" / "train_log.jsonl").read_text().splitlines()]
    assert all(x["lm"] == 0.0 for x in log) and sum(x["aux"] for x in log[-3:]) < sum(x["aux"] for x in log[:3])


@pytest.fixture(scope="module")
def gemma_ranker():
    """A tiny Gemma-3 text model: 4 layers, sliding window 6 on layers 0, 1 and 3 (short enough to bind inside
    the documents and across them), full attention on layer 2, GQA, q/k norms, scaled embeddings."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from densekit.core.models import resolve

    torch.manual_seed(3)
    tok = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    cfg = Gemma3TextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=6,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
                           max_position_embeddings=1024, pad_token_id=tok.pad_token_id, query_pre_attn_scalar=8)
    return BlockRanker(Gemma3ForCausalLM(cfg).eval(), tok, BlockRankConfig(doc_max_tokens=12, score_layer=3))


@torch.no_grad()
@pytest.mark.parametrize("signal_tokens, doc_mass", [(2, "sum"), (0, "mean")])
def test_gemma3_sliding_and_full_layers_match_the_dense_reference(gemma_ranker, signal_tokens, doc_mass, monkeypatch):
    """Efficient path == dense reference through sliding layers (0, 1) and the full layer (2, the scoring
    layer): document mass and the hidden states after those 3 layers; the window does change the result."""
    r = gemma_ranker
    for name, value in (("signal_tokens", signal_tokens), ("doc_mass", doc_mass), ("score_layer", 2), ("doc_batch", 3)):
        monkeypatch.setattr(r.config, name, value)
    p = r.build_prompt("what is a cat", DOCS)
    assert max(len(d) for d in p.docs) > 6  # the window binds inside a document
    eff, ref = r.forward_blocks(p, n_layers=3), r.reference_forward(p, n_layers=3)
    assert torch.allclose(r.doc_mass(p, eff["capture"]), ref["mass"], atol=1e-5)
    assert torch.allclose(eff["hidden"], ref["hidden"], atol=1e-4)
    monkeypatch.setattr(r, "windows", {t: None for t in r.windows})  # without the window the answer changes
    assert not torch.allclose(r.forward_blocks(p, n_layers=3)["hidden"], eff["hidden"], atol=1e-4)


@torch.no_grad()
def test_a_sliding_scoring_layer_that_cannot_reach_the_documents_is_refused(gemma_ranker, monkeypatch):
    monkeypatch.setattr(gemma_ranker.config, "score_layer", 3)
    with pytest.raises(ValueError, match="sliding window \\(6 positions\\) does not reach the documents"):
        gemma_ranker.score("what is a cat", DOCS)


def test_an_unsupported_model_family_is_refused():
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from densekit.core.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve("sentence-transformers/all-MiniLM-L6-v2"))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2))
    with pytest.raises(ValueError, match="not 'gpt2'.*pointwise or qlm"):
        BlockRanker(model, tok)


@pytest.mark.parametrize("model", ["HuggingFaceTB/SmolLM2-135M-Instruct", "google/gemma-3-270m"])
def test_probed_defaults_are_the_probes_choice(model):
    """``PROBED`` holds what the probe chose (fails if a default is typed in by hand or left behind a newer probe): the
    setting of the model's last pooled summary in bench/results/blockrank_probe.jsonl, else of its last summary."""
    from pathlib import Path

    from densekit.reranker.blockrank import PROBED

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "blockrank_probe.jsonl"
    summaries = [r for r in map(json.loads, path.read_text().splitlines()) if r.get("summary") and r["model"] == model]
    pooled = [r for r in summaries if r.get("pooled")]
    assert PROBED[model] == (pooled or summaries)[-1]["setting"]
