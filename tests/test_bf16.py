"""bf16 mixed precision of the training engine, on CPU (the logic bench/gpu.py checks on CUDA): a bf16 step runs under
autocast (its loss differs from the float32 step's) yet stays within bf16 rounding of it, moves the weights the same
way, and saves float32 weights. Guards: a kind's training config that never hands ``bf16`` to the engine (the
reranker's did not before issue 26: its step would equal the float32 one exactly)."""
from __future__ import annotations

import json

import pytest
import torch

from densekit.reranker.config import RerankTrainConfig
from densekit.retriever.config import TrainConfig

EXAMPLES = [{"query": f"question {i} about cats and dogs", "positives": [f"answer {i} says cats purr and dogs bark"],
             "negatives": [f"unrelated text {i} on fish and the sea"]} for i in range(8)]


def _first_loss(out) -> float:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]


def _update(before: dict, model) -> torch.Tensor:
    after = model.state_dict()
    return torch.cat([(after[k].float() - before[k].float()).flatten() for k in before])


def test_retriever_bf16_step_is_autocast_close_to_float32_and_saves_float32(tiny_bert, tmp_path):
    from densekit.retriever.encoder import DualEncoder
    from densekit.retriever.train import train

    losses, updates = {}, {}
    for bf16 in (False, True):
        enc = DualEncoder.from_pretrained(str(tiny_bert))
        before = {k: v.clone() for k, v in enc.model.state_dict().items() if v.is_floating_point()}
        config = TrainConfig(batch_size=8, max_steps=1, warmup_ratio=0.0, lr=1e-3, bf16=bf16, seed=0)
        train(enc, EXAMPLES, tmp_path / str(bf16), config, show_progress=False)
        losses[bf16], updates[bf16] = _first_loss(tmp_path / str(bf16)), _update(before, enc.model)
        saved = DualEncoder.from_pretrained(str(tmp_path / str(bf16) / "model"))
        assert all(p.dtype == torch.float32 for p in saved.model.parameters())
    assert losses[True] != losses[False]  # autocast was on
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)
    assert torch.nn.functional.cosine_similarity(updates[True], updates[False], dim=0) > 0.9


def test_reranker_lora_bf16_step_is_autocast_close_to_float32(tiny_causal_lm, tmp_path):
    from densekit.reranker.pointwise import LLMReranker
    from densekit.reranker.train import train_reranker

    losses = {}
    for bf16 in (False, True):
        reranker = LLMReranker.from_pretrained(str(tiny_causal_lm))
        config = RerankTrainConfig(group_size=2, batch_size=2, max_steps=2, warmup_ratio=0.0, lr=1e-3, bf16=bf16)
        train_reranker(reranker, EXAMPLES, tmp_path / str(bf16), config, show_progress=False)
        log = [json.loads(x) for x in (tmp_path / str(bf16) / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 2 and all(torch.isfinite(torch.tensor(x["loss"])) for x in log)
        losses[bf16] = log[0]["loss"]
        lora = {k: v for k, v in reranker.model.state_dict().items() if "lora_B" in k}
        assert lora and all(v.dtype == torch.float32 for v in lora.values())
        assert any(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: the steps moved it
    assert losses[True] != losses[False]
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)


def test_the_retriever_loss_is_float32_under_bf16_autocast(tiny_bert):
    """Guards: the score matrix computed in bf16 under autocast (each logit rounded, at tau = 0.05 by up to ~0.08)."""
    from densekit.retriever.encoder import DualEncoder
    from densekit.retriever.examples import Batch
    from densekit.retriever.train import RetrieverStep, _doc_keys, _embed_batch

    enc = DualEncoder.from_pretrained(str(tiny_bert)).eval()
    step = RetrieverStep(enc, TrainConfig(batch_size=4, n_negatives=1))
    batch = Batch([e["query"] for e in EXAMPLES[:4]], [e["positives"][0] for e in EXAMPLES[:4]],
                  [e["negatives"] for e in EXAMPLES[:4]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = step(batch)
        q, d_pos, d_neg = _embed_batch(enc, batch, 8)
        naive = step.loss_fn(q, d_pos, d_neg, keys=_doc_keys(batch, q.device))  # the score matrix under autocast
    expected = step.loss_fn(q.float(), d_pos.float(), d_neg.float(), keys=_doc_keys(batch, q.device))
    assert loss.dtype == torch.float32 and loss.item() == expected.item()
    assert naive.item() != expected.item()  # what the test tells apart
