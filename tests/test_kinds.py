"""Issue 27: a reranker kind is one module plus one registry line; the cross-encoder kind.

A kind registered from this test file alone (scoring + loss + config) trains through ``densekit train reranker
--kind``; the cross-encoder scores exactly as its model's own forward, its losses equal hand-computed values, and it
trains (SFT and CL) and reloads through the CLI."""
import json
import math
from dataclasses import dataclass

import pytest
import torch

from densekit.eval.cli import main
from densekit.reranker import kinds
from densekit.reranker.base import load_reranker, register, rerank
from densekit.reranker.config import CrossEncoderConfig, RerankTrainConfig
from densekit.reranker.cross import CrossEncoderRanker, pair_gradient_weights, pair_losses
from densekit.core.settings import setting


# ---------------------------------------------------------------- a kind defined here, nowhere else
@dataclass
class OverlapConfig:
    """The toy kind's scoring setting."""

    lowercase: bool = setting(True, "overlap-test: compare words in lower case")


class OverlapRanker(torch.nn.Module):
    """Score = w * (query words in the document) + b; trained with a hinge loss on positive - negative margins."""

    kind = "overlap-test"
    config_class = OverlapConfig
    objectives = ("hinge",)

    def __init__(self, config=None):
        super().__init__()
        self.config = config or OverlapConfig()
        self.model = torch.nn.Linear(1, 1)
        torch.nn.init.constant_(self.model.weight, -0.5)  # starts backwards: negatives above positives

    @classmethod
    def from_pretrained(cls, target, config=None):
        return cls(config)

    def prepare_training(self, config, options):
        pass

    def _features(self, query, docs):
        words = set((query.lower() if self.config.lowercase else query).split())
        return torch.tensor([[float(len(words & set((d.lower() if self.config.lowercase else d).split())))] for d in docs])

    def score_groups(self, groups, batch_size=8, show_progress=False, mode=None):
        with torch.no_grad():
            return [self.model(self._features(q, docs))[:, 0].tolist() for q, docs in groups]

    def rerank(self, *args, **kwargs):
        return rerank(self, *args, **kwargs)

    def train_step(self, groups, config, options, step):
        scores = torch.stack([self.model(self._features(q, docs))[:, 0] for q, docs in groups])
        loss = torch.relu(1.0 - (scores[:, :1] - scores[:, 1:])).mean()
        return loss, {"margin": (scores[:, 0] - scores[:, 1:].mean(1)).mean().item()}

    def save(self, folder, overwrite=False):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.json").write_text(json.dumps({"w": self.model.weight.item(), "b": self.model.bias.item()}))


@pytest.fixture
def overlap_kind(monkeypatch):
    """The kind above, registered for one test (``@register`` as a user would write it; the registry restored after)."""
    monkeypatch.setattr(kinds, "KINDS", dict(kinds.KINDS))
    return register(OverlapRanker)


def test_a_kind_from_a_test_file_trains_through_the_cli(overlap_kind, tiny_beir, tiny_bert, tmp_path, capsys):
    """Guards the trainer or the CLI naming kinds (a ``STEPS`` table, ``--scorer`` choices, ``kind == ...``): the kind
    above is registered here alone and trains one step through ``densekit train reranker --kind``."""
    assert "overlap-test" in kinds.trainable()
    out = tmp_path / "run"
    assert main(["train", "reranker", "--kind", "overlap-test", "--data", str(tiny_beir), "--split", "test",
                 "--model", "anything", "--retriever-model", str(tiny_bert), "--depth", "6", "--group-size", "2", "--batch-size", "2",
                 "--max-steps", "1", "--lr", "0.5", "--warmup-ratio", "0", "--no-lowercase", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "overlap-test" and result["objective"] == "hinge"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and math.isfinite(log[0]["loss"]) and "margin" in log[0]
    weights = json.loads((out / "model" / "weights.json").read_text())
    assert weights["w"] > -0.5  # the step moved the weight towards ranking overlapping documents first


def test_a_kinds_objectives_and_settings_are_its_own(overlap_kind, tiny_beir, tmp_path, capsys):
    """Guards a flag or objective of one kind silently ignored by another."""
    base = ["train", "reranker", "--data", str(tiny_beir), "--out", str(tmp_path / "o"), "--first-stage", "bm25"]
    for extra, message in ((["--kind", "blockrank", "--objective", "sft"], "does not fit --kind blockrank"),
                           (["--kind", "qlm", "--aux-weight", "0.5"], "--aux-weight is ignored by --kind qlm"),
                           (["--kind", "cross", "--template", "{document} {query}"], "--template is ignored by --kind cross"),
                           (["--kind", "overlap-test", "--max-length", "64"], "--max-length is ignored")):
        with pytest.raises(SystemExit) as stop:
            main(base + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_trainer_refuses_an_objective_the_kind_does_not_train(tiny_causal_lm, tmp_path):
    """Guards the objective check moving out of the (now free-form) shared config: the API refuses it too."""
    from densekit.reranker.qlm import QLMReranker
    from densekit.reranker.train import train_reranker

    examples = [{"query": "q", "positives": ["a"], "negatives": ["b"]}]
    with pytest.raises(ValueError, match="objective 'blockrank' does not fit the qlm reranker"):
        train_reranker(QLMReranker.from_pretrained(str(tiny_causal_lm)), examples, tmp_path / "o",
                       RerankTrainConfig(objective="blockrank", group_size=2, batch_size=1), show_progress=False)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the cross-encoder kind
@pytest.fixture(scope="module", params=[1, 2], ids=["1-label", "2-labels"])
def tiny_cross(request, tmp_path_factory):
    """A random 2-layer BertForSequenceClassification saved by ``save_pretrained``, with the MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from conftest import MINILM
    from densekit.core.models import resolve

    torch.manual_seed(1)
    tokenizer = AutoTokenizer.from_pretrained(resolve(MINILM))
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, num_labels=request.param))
    folder = tmp_path_factory.mktemp("cross") / f"cross-{request.param}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model.eval(), tokenizer


def test_cross_encoder_scores_equal_the_models_own_forward(tiny_cross):
    """Guards a wrong logit (label 0 for a 2-label head), a wrong pair order, padding leaking into scores or a lost
    token_type_ids: each score equals the model's forward on the tokenizer's own (query, document) encoding."""
    folder, model, tokenizer = tiny_cross
    ranker = load_reranker(f"cross:{folder}")
    assert isinstance(ranker, CrossEncoderRanker)
    query, docs = "why do cats purr", ["cats purr when content", "the sea is full of salt water and fish " * 3, "x"]
    got = ranker.score(query, docs, batch_size=2)
    with torch.no_grad():
        for doc, score in zip(docs, got):
            logits = model(**tokenizer(query, doc, return_tensors="pt")).logits[0]
            expected = logits[0] if len(logits) == 1 else logits[1] - logits[0]
            assert score == pytest.approx(expected.item(), abs=1e-5)


def test_cross_encoder_cuts_the_document_not_the_query(tiny_cross):
    """Guards truncation eating the query: the input stays within max_length and keeps every query token."""
    folder, _, tokenizer = tiny_cross
    ranker = CrossEncoderRanker.from_pretrained(str(folder), CrossEncoderConfig(max_length=16))
    encoded = ranker.encode_pair("cats purr", "word " * 100)
    assert len(encoded["input_ids"]) == 16
    assert tokenizer.decode(encoded["input_ids"]).startswith("[CLS] cats purr [SEP] word")


def test_cross_encoder_losses_equal_hand_computed_values():
    """Guards a swapped label column, a missing temperature or a unified surrogate whose gradient is not the weight's."""
    s = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    sig = lambda x: 1 / (1 + math.exp(-x))
    sft = -(math.log(sig(2.0)) + math.log(1 - sig(0.0)) + math.log(1 - sig(-1.0))) / 3
    assert pair_losses(s, RerankTrainConfig(objective="sft")).item() == pytest.approx(sft, abs=1e-6)
    z = [math.exp(x / 0.5) for x in (2.0, 0.0, -1.0)]
    cl = -math.log(z[0] / sum(z))
    assert pair_losses(s, RerankTrainConfig(objective="cl", temperature=0.5)).item() == pytest.approx(cl, abs=1e-6)
    for weight in ("sft", "cl"):
        config = RerankTrainConfig(objective="unified", weight=weight, temperature=0.5)
        grad, = torch.autograd.grad(pair_losses(s, config), s)
        reference, = torch.autograd.grad(pair_losses(s, RerankTrainConfig(objective=weight, temperature=0.5)), s)
        scale = 3 if weight == "sft" else 1  # SFT's loss is a mean over the pairs of the group, the surrogate over groups
        assert torch.allclose(grad, reference * scale, atol=1e-6)
        assert torch.allclose(grad.abs(), pair_gradient_weights(s.detach(), weight, 0.5), atol=1e-6)


@pytest.mark.parametrize("objective", ["sft", "cl"])
def test_cross_encoder_trains_from_an_encoder_and_reloads(tiny_beir, tiny_bert, tmp_path, capsys, objective):
    """Guards the new head being dropped on save or reload, or a checkpoint that scores differently when reloaded:
    a cross-encoder initialised from a BERT encoder (no head) trains through the CLI, and the saved folder reranks
    as the trained model does."""
    out = tmp_path / objective
    assert main(["train", "reranker", "--kind", "cross", "--objective", objective, "--data", str(tiny_beir),
                 "--split", "test", "--model", str(tiny_bert), "--retriever-model", str(tiny_bert), "--depth", "6", "--group-size",
                 "3", "--batch-size", "2", "--epochs", "3", "--full", "--lr", "1e-2", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "cross"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log) and {"w_sft_pos", "w_cl_neg", "hit"} <= set(log[0])
    from conftest import cli_rerank_problem

    assert cli_rerank_problem(tiny_beir, tmp_path, capsys, str(out / "model")) is None
    before = CrossEncoderRanker.from_pretrained(str(tiny_bert)).score("why do cats purr", ["cats purr", "fish swim"])
    after = load_reranker(str(out / "model")).score("why do cats purr", ["cats purr", "fish swim"])
    assert before != pytest.approx(after)  # trained weights, not a fresh random head


def test_cross_encoder_with_lora_trains_its_new_head(tiny_beir, tiny_bert, tmp_path, capsys):
    """Guards LoRA leaving the new classification head random (peft's SEQ_CLS task keeps it trainable) or an adapter
    folder that cannot be reloaded."""
    out = tmp_path / "lora"
    assert main(["train", "reranker", "--kind", "cross", "--data", str(tiny_beir), "--split", "test",
                 "--model", str(tiny_bert), "--retriever-model", str(tiny_bert), "--depth", "6", "--group-size", "3",
                 "--batch-size", "2", "--max-steps", "2", "--lora-targets", "query", "value", "--out", str(out)]) == 0
    capsys.readouterr()
    saved = json.loads((out / "model" / "reranker.json").read_text())
    assert saved["kind"] == "cross" and not saved["full_model"]
    reloaded = load_reranker(str(out / "model"))
    assert len(reloaded.score("why do cats purr", ["cats purr", "fish swim"])) == 2


@pytest.mark.parametrize("target, message", [("{tmp}/empty", "holds no model (no config.json)"),
                                             ("{tmp}/file.txt", "is a file"),
                                             ("nosuch-org/nosuch-cross-encoder", "not found")])
def test_cross_encoder_refuses_what_it_cannot_load(tiny_beir, tmp_path, target, message, capsys):
    """Guards a confusing transformers traceback (or a download attempt offline) instead of densekit's error."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    code = main(["eval", "--data", str(tiny_beir), "--retriever", "bm25", "--reranker", f"cross:{target.format(tmp=tmp_path)}"])
    err = capsys.readouterr().err
    assert code == 2 and "densekit: error:" in err and message in err


def test_cross_encoder_top_layer_training_keeps_the_head_and_pooler_trainable(tiny_bert):
    """Guards --train-layers on a cross-encoder freezing its new head or the pooler under it (the head would stay
    random: the model could only learn the label prior) or leaving lower BERT layers trainable."""
    from densekit.reranker.base import restrict_to_top_layers

    ranker = CrossEncoderRanker.from_pretrained(str(tiny_bert))
    restrict_to_top_layers(ranker.model, 1)
    trainable = {n for n, p in ranker.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("classifier.") for n in trainable) and any(".pooler." in n for n in trainable)
    assert all(".layer.0." not in n and "embeddings" not in n for n in trainable)
    assert any(".layer.1." in n for n in trainable)
