"""Query-likelihood training objectives, top-L layer training and gradient accumulation."""
import json
import math

import pytest
import torch

from densekit.reranker.config import QLMConfig, RerankTrainConfig
from densekit.reranker.qlm import QLMReranker
from densekit.reranker.qlm import qlm_gradient_weights, qlm_losses
from densekit.reranker.train import make_groups, train_reranker

SCORES = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.2, -1.0]])  # 2 groups of 3, column 0 the positive


def toy_groups():
    return [{"query": f"{t} {t}", "positives": [f"{t} {t} {t}"], "negatives": [f"{o} {o}" for o in "abcdefg" if o != t]}
            for t in "abcdefg"]


def test_qlm_sft_and_cl_losses_hand_computed():
    assert qlm_losses(SCORES, RerankTrainConfig(objective="sft")).item() == pytest.approx((1.0 + 0.5) / 2)
    tau = 0.5
    cl = sum(-g[0] / tau + math.log(sum(math.exp(v / tau) for v in g)) for g in SCORES.tolist()) / 2
    assert qlm_losses(SCORES, RerankTrainConfig(objective="cl", temperature=tau)).item() == pytest.approx(cl, abs=1e-6)


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_qlm_unified_reproduces_each_gradient(objective):
    a, b = SCORES.clone().requires_grad_(), SCORES.clone().requires_grad_()
    qlm_losses(a, RerankTrainConfig(objective=objective, temperature=0.5)).backward()
    qlm_losses(b, RerankTrainConfig(objective="unified", weight=objective, temperature=0.5)).backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert qlm_gradient_weights(SCORES, "sft").tolist() == [[1, 0, 0], [1, 0, 0]]


def test_generative_sft_equals_positive_query_nll(tiny_causal_lm):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm))
    groups = make_groups(toy_groups(), 3, 0, 0)[:2]
    loss, _ = rr.train_step(groups, RerankTrainConfig(objective="sft", group_size=3), None, 0)
    nll = []
    for query, docs in groups:
        ids, m = rr.encode_pair(query, docs[0])
        with torch.no_grad():
            logp = torch.log_softmax(rr.model(input_ids=torch.tensor([ids])).logits[0], -1)
        nll.append(-sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - m, len(ids))) / m)
    assert loss.item() == pytest.approx(sum(nll) / 2, abs=1e-4)


def test_micro_batches_accumulate_to_the_full_batch_gradient(tiny_causal_lm, tmp_path, monkeypatch):
    """Guards the engine's accumulation over --micro-batch (a loss not scaled by its share, a micro-batch dropped):
    the gradient the optimizer steps with, and the logged loss, equal one pass over the whole batch."""
    from densekit.core import engine

    seen = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            seen[-1].append([p.grad.clone() for group in self.param_groups for p in group["params"]])
            return super().step(closure)

    monkeypatch.setattr(engine.torch.optim, "AdamW", Recording)
    losses = []
    for micro in (None, 1):
        seen.append([])
        rr = QLMReranker.from_pretrained(str(tiny_causal_lm))
        config = RerankTrainConfig(objective="cl", group_size=3, batch_size=4, micro_batch=micro, max_steps=1,
                                   lora=False, warmup_ratio=0.0, checkpoint_every=100)
        train_reranker(rr, toy_groups() * 2, tmp_path / f"micro-{micro}", config, show_progress=False)
        losses.append(json.loads((tmp_path / f"micro-{micro}" / "train_log.jsonl").read_text().splitlines()[0])["loss"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    (full,), (split,) = seen
    assert len(full) == len(split) and any(g.abs().sum() > 0 for g in full)
    for g1, g2 in zip(full, split):
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [True, False])
def test_top_layer_training_leaves_lower_layers_bit_identical(tiny_causal_lm, tmp_path, lora):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm))
    before = {k: v.clone() for k, v in rr.model.state_dict().items()}
    config = RerankTrainConfig(objective="cl", group_size=3, batch_size=2, lr=1e-2, epochs=1, lora=lora, lora_r=4,
                               train_layers=1, warmup_ratio=0.0, checkpoint_every=100)
    trained = train_reranker(rr, toy_groups(), tmp_path / "out", config, show_progress=False)
    if lora:
        names = [n for n, _ in trained.model.named_parameters() if "lora_" in n]
        assert names and all("layers.1." in n for n in names)
    model = trained.model.merge_and_unload() if lora else trained.model
    after = model.state_dict()
    lower = [k for k in before if "layers.0." in k or "embed_tokens" in k]
    upper = [k for k in before if "layers.1." in k and k.endswith("proj.weight")]
    assert lower and upper
    for key in lower:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in upper)


def test_qlm_training_lowers_its_loss(tiny_causal_lm, tmp_path):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(doc_max_tokens=16))
    config = RerankTrainConfig(objective="cl", group_size=3, batch_size=2, lr=5e-3, epochs=4, lora_r=4, temperature=0.5,
                               warmup_ratio=0.0, checkpoint_every=100)
    groups = make_groups(toy_groups(), 3, 0, 0)
    with torch.no_grad():
        before = rr.train_step(groups, config, None, 0)[0].item()
    trained = train_reranker(rr, toy_groups(), tmp_path / "out", config, show_progress=False)
    with torch.no_grad():
        after = trained.train_step(groups, config, None, 0)[0].item()
    assert after < before
    log = [json.loads(l) for l in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert {"s_pos", "s_neg", "hit"} <= set(log[0])
    assert json.loads((tmp_path / "out" / "model" / "reranker.json").read_text())["kind"] == "qlm"


def test_objective_must_fit_the_kind(tiny_causal_lm, tmp_path):
    rr = QLMReranker.from_pretrained(str(tiny_causal_lm))
    with pytest.raises(ValueError, match="does not fit the qlm reranker"):
        train_reranker(rr, toy_groups(), tmp_path / "out", RerankTrainConfig(objective="blockrank"), show_progress=False)


def test_cli_trains_a_qlm_reranker_on_top_layers_and_evaluates_it(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys):
    from densekit.eval.cli import main

    assert main(["train", "reranker", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_causal_lm),
                 "--retriever-model", str(tiny_bert), "--kind", "qlm", "--objective", "cl", "--group-size", "2", "--batch-size", "2",
                 "--micro-batch", "1", "--train-layers", "1", "--epochs", "2", "--out", str(tmp_path / "rr")]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "qlm"
    saved = json.loads((tmp_path / "rr" / "model" / "reranker.json").read_text())
    assert saved["kind"] == "qlm"
    from safetensors.torch import load_file

    # the tiny LM has 2 decoder layers: --train-layers 1 puts LoRA on the top one only (fails if the flag is ignored)
    adapted = list(load_file(str(tmp_path / "rr" / "model" / "adapter_model.safetensors")))
    assert adapted and all(".layers.1." in k for k in adapted), adapted
    assert main(["eval", "--data", str(tiny_beir), "--json", "--reranker", str(tmp_path / "rr" / "model"),
                 "--rerank-top-k", "6"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["reranker"] == str(tmp_path / "rr" / "model") and row["retriever"] == "bm25"


def test_lower_layer_cache_gives_the_full_forward_logits(tiny_causal_lm):
    """Second sight of the same prompts, batched differently (other padding): only the top layer runs
    (the lower layer's forward is not called), and the logits equal the full model's."""
    from densekit.reranker.layer_cache import LowerLayerCache, decoder_stack

    rr = QLMReranker.from_pretrained(str(tiny_causal_lm))
    encoded = [rr.encode_pair(q, d) for q, docs in make_groups(toy_groups(), 3, 0, 0)[:3] for d in docs]
    cache = LowerLayerCache(rr.model, 1)
    rr.lower_cache = cache
    rr.model.train()
    with torch.no_grad():
        full = rr.batch_scores(encoded)       # all misses: the whole model runs, layer 1's inputs are kept
        calls = []
        hook = decoder_stack(rr.model).layers[0].register_forward_hook(lambda *a: calls.append(1))
        cached = torch.cat([rr.batch_scores(encoded[i:i + 2]) for i in range(0, len(encoded), 2)])
        hook.remove()
    assert cache.misses == len(encoded) and cache.hits == len(encoded) and len(cache) == len({tuple(x) for x, _ in encoded})
    assert calls == []
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
    rr.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(rr.batch_scores(encoded), full, atol=1e-5, rtol=1e-5)  # scoring: from the cache too
    rr.lower_cache = None
    with torch.no_grad():
        torch.testing.assert_close(rr.batch_scores(encoded), full, atol=1e-5, rtol=1e-5)  # without it: the full model


def test_training_with_the_lower_layer_cache_equals_training_without(tiny_causal_lm, tmp_path, monkeypatch):
    """Three epochs of top-1-layer LoRA training, the same groups each epoch (epochs 2-3 run from the cache):
    same losses, same weights as without the cache."""
    results = []
    for cached in (False, True):
        rr = QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(doc_max_tokens=16))
        config = RerankTrainConfig(objective="cl", group_size=3, batch_size=2, lr=5e-3, epochs=3, lora_r=4, lora_dropout=0.0,
                                   train_layers=1, cache_lower_layers=cached, fixed_negatives=True, warmup_ratio=0.0,
                                   checkpoint_every=100)
        lower = []  # prompts that ran through the lower layer
        if cached:
            from densekit.reranker.layer_cache import LowerLayerCache

            original = LowerLayerCache._run_lower
            monkeypatch.setattr(LowerLayerCache, "_run_lower", lambda self, model, seqs: lower.extend(seqs) or original(self, model, seqs))
        trained = train_reranker(rr, toy_groups(), tmp_path / f"out-{cached}", config, show_progress=False)
        assert trained.lower_cache is None
        if cached:  # 3 epochs x 3 steps x 2 groups x 3 prompts forwarded; each distinct prompt's lower layer ran once
            assert len(lower) == len(set(lower)) and 0 < len(lower) <= 7 * 3 < 54
        log = [json.loads(l)["loss"] for l in (tmp_path / f"out-{cached}" / "train_log.jsonl").read_text().splitlines()]
        results.append((log, {k: v for k, v in trained.model.state_dict().items() if "lora_" in k}))
    (loss_a, weights_a), (loss_b, weights_b) = results
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], atol=1e-5, rtol=1e-4)


def test_cache_lower_layers_needs_train_layers():
    with pytest.raises(ValueError, match="needs --train-layers"):
        RerankTrainConfig(cache_lower_layers=True)


def test_fixed_negatives_repeat_the_groups_in_another_order():
    examples = toy_groups()
    one, two = make_groups(examples, 3, 7, 0, resample=False), make_groups(examples, 3, 7, 1, resample=False)
    assert sorted(one) == sorted(two) and one != two
    assert sorted(make_groups(examples, 3, 7, 0)) != sorted(make_groups(examples, 3, 7, 1))


def test_training_logs_a_tuning_metric_every_n_steps(tiny_causal_lm, tmp_path):
    """``evaluate`` runs after steps 2, 4 and the last (5), in eval mode without gradients; its nDCG@10 is
    pytrec_eval's on the reranked tuning run, and the last logged value is the saved model's."""
    from densekit.eval.metrics import evaluate
    from densekit.eval.reranking import rerank_metric

    corpus = {f"d{t}": {"title": "", "text": f"{t} {t} {t}"} for t in "abcdefg"}
    queries = {f"q{t}": f"{t} {t}" for t in "abcd"}
    qrels = {f"q{t}": {f"d{t}": 1} for t in "abcd"}
    run = {q: {d: 1.0 for d in corpus} for q in queries}
    measure = rerank_metric(run, corpus, queries, qrels, top_k=7)
    seen = []

    def watched(reranker):
        seen.append((reranker.model.training, torch.is_grad_enabled()))
        return measure(reranker)

    rr = QLMReranker.from_pretrained(str(tiny_causal_lm), QLMConfig(doc_max_tokens=16))
    config = RerankTrainConfig(objective="cl", group_size=3, batch_size=1, lr=5e-3, max_steps=5, lora_r=4,
                               temperature=0.5, checkpoint_every=100)
    trained = train_reranker(rr, toy_groups(), tmp_path / "out", config, show_progress=False,
                             evaluate=watched, evaluate_every=2)
    log = [json.loads(l) for l in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "eval_ndcg@10" in x] == [2, 4, 5]
    assert seen == [(False, False)] * 3
    assert trained.model.training is False  # saved in eval mode after the last step
    reranked = trained.rerank(run, corpus, queries, top_k=7, show_progress=False)
    assert log[-1]["eval_ndcg@10"] == pytest.approx(evaluate(reranked, qrels, ["ndcg@10"])[1]["ndcg@10"], abs=1e-9)


def test_train_doc_tokens_cut_training_documents_only(tiny_causal_lm):
    from transformers import AutoTokenizer

    from densekit.reranker.train import cut_documents

    tok = AutoTokenizer.from_pretrained(str(tiny_causal_lm))
    examples = [{"query": "a long query that stays whole", "positives": ["one two three four five"],
                 "negatives": ["six seven", "eight nine ten eleven"]}]
    cut = cut_documents(examples, tok, 3)
    assert cut[0]["query"] == examples[0]["query"]
    assert cut[0]["positives"] == ["one two three"] and cut[0]["negatives"] == ["six seven", "eight nine ten"]
    assert examples[0]["positives"] == ["one two three four five"]  # the input is not changed


def test_cli_watches_an_eval_split_while_training(tiny_beir, tiny_bert, tiny_causal_lm, tmp_path, capsys):
    from densekit.eval.cli import main

    base = ["train", "reranker", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_causal_lm),
            "--retriever-model", str(tiny_bert), "--kind", "qlm", "--objective", "cl", "--group-size", "2",
            "--batch-size", "2", "--epochs", "3", "--max-steps", "3"]
    assert main(base + ["--eval-split", "train", "--eval-every", "2", "--eval-k", "4", "--out", str(tmp_path / "rr")]) == 0
    log = [json.loads(l) for l in (tmp_path / "rr" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "eval_ndcg@10" in x] == [2, 3]
    # the last watched figure is the saved model's own: `densekit eval` of the same split and first stage gives it
    # (fails if the watched figure were computed on another split, first stage or model state)
    capsys.readouterr()
    assert main(["eval", "--data", str(tiny_beir), "--split", "train", "--retriever", "dense", "--model", str(tiny_bert),
                 "--top-k", "4", "--reranker", str(tmp_path / "rr" / "model"), "--rerank-top-k", "4", "--json"]) == 0
    watched = json.loads(capsys.readouterr().out.splitlines()[0])
    assert log[-1]["step"] == 3 and log[-1]["eval_ndcg@10"] == pytest.approx(watched["ndcg@10"], abs=1e-9)
    assert main(base + ["--eval-split", "test", "--eval-every", "2", "--out", str(tmp_path / "same")]) == 2
    assert "is the training split" in capsys.readouterr().err
    assert main(base + ["--eval-every", "2", "--out", str(tmp_path / "none")]) == 2
    assert "needs --eval-split" in capsys.readouterr().err
    assert not (tmp_path / "same").exists() and not (tmp_path / "none").exists()


def test_a_stored_lower_layer_cache_is_shared_by_models_with_the_same_lower_layers(tiny_causal_lm, tmp_path):
    """A second cache over the same store (a fresh reranker, LoRA on its top layer: another run) reads the states
    and never runs layer 0, with the full model's scores; a model whose layer 0 differs gets its own subfolder."""
    from peft import LoraConfig, get_peft_model

    from densekit.reranker.layer_cache import LowerLayerCache, decoder_stack

    store = tmp_path / "store"
    first = QLMReranker.from_pretrained(str(tiny_causal_lm))
    encoded = [first.encode_pair(q, d) for q, docs in make_groups(toy_groups(), 3, 0, 0)[:2] for d in docs]
    first.lower_cache = LowerLayerCache(first.model, 1, store=store)
    with torch.no_grad():
        reference = first.batch_scores(encoded)
    files = sorted(store.rglob("*.pt"))
    assert len(files) == len({tuple(x) for x, _ in encoded})

    second = QLMReranker.from_pretrained(str(tiny_causal_lm))
    second.model = get_peft_model(second.model, LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[1]))
    second.model.eval()
    second.lower_cache = LowerLayerCache(second.model, 1, store=store)
    calls = []
    hook = decoder_stack(second.model).layers[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        shared = second.batch_scores(encoded)
    hook.remove()
    assert calls == [] and second.lower_cache.loaded == len(files)
    torch.testing.assert_close(shared, reference, atol=1e-5, rtol=1e-5)  # LoRA B starts at zero: the same model

    files[0].write_bytes(b"torn")  # an unreadable file is recomputed, not trusted
    third = QLMReranker.from_pretrained(str(tiny_causal_lm))
    third.lower_cache = LowerLayerCache(third.model, 1, store=store)
    with torch.no_grad():
        torch.testing.assert_close(third.batch_scores(encoded), reference, atol=1e-5, rtol=1e-5)
    assert third.lower_cache.loaded == len(files) - 1

    other = QLMReranker.from_pretrained(str(tiny_causal_lm))
    with torch.no_grad():
        decoder_stack(other.model).layers[0].mlp.up_proj.weight.mul_(1.5)
    other.lower_cache = LowerLayerCache(other.model, 1, store=store)
    assert other.lower_cache.store != first.lower_cache.store
    with torch.no_grad():
        other.batch_scores(encoded)
    assert other.lower_cache.loaded == 0
