import json
import random

import pytest
import torch

from densekit.eval.cli import main
from densekit.retriever import examples as ex
from densekit.retriever.encoder import DualEncoder
from densekit.core.checkpoints import read_train_log
from densekit.core.io import DataError
from densekit.retriever.mining import select_negatives, write_mined
from densekit.retriever.config import TrainConfig
from densekit.retriever.train import _embed_batch, train

TOPICS = ["cats", "dogs", "fish", "birds", "trees", "rivers", "stars", "trains", "books", "music", "bread", "snow"]


def toy_examples():
    return [{"query": f"about {t}", "positives": [f"{t} {t} are described here"],
             "negatives": [f"{o} {o} are described here" for o in TOPICS if o != t][:3]} for t in TOPICS]


def batch_loss(encoder, config, examples):
    batch = ex.batches(examples, len(examples), config.n_negatives, seed=0, epoch=0)[0]
    with torch.no_grad():
        was = encoder.model.training
        encoder.model.eval()
        q, p, n = _embed_batch(encoder, batch)
        encoder.model.train(was)
        return float(config.make_loss()(q, p, n))


@pytest.mark.parametrize("loss", ["infonce", "mw"])
def test_training_lowers_loss(tiny_bert, tmp_path, loss):
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    config = TrainConfig(loss=loss, batch_size=4, n_negatives=1, lr=1e-3, epochs=8, warmup_ratio=0.0,
                         temperature=0.1, checkpoint_every=1000)
    before = batch_loss(enc, config, toy_examples())
    trained = train(enc, toy_examples(), tmp_path / "out", config, show_progress=False)
    after = batch_loss(trained, config, toy_examples())
    assert after < before * 0.8
    log = [json.loads(l) for l in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    saved = DualEncoder.from_pretrained(str(tmp_path / "out" / "model"))
    assert torch.allclose(torch.from_numpy(saved.encode(["about cats"])), torch.from_numpy(trained.encode(["about cats"])), atol=1e-5)


def test_resume_reproduces_uninterrupted_run(tiny_bert, tmp_path):
    config = TrainConfig(batch_size=4, n_negatives=2, lr=1e-3, epochs=3, checkpoint_every=2, temperature=0.1)
    full = train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), tmp_path / "a", config, show_progress=False)
    train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), tmp_path / "b", config, show_progress=False, stop_after=5)
    assert not (tmp_path / "b" / "model").exists()
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    resumed = train(DualEncoder.from_pretrained(str(tiny_bert)), toy_examples(), tmp_path / "b", config,
                    resume=True, show_progress=False)
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    info = read_train_log(tmp_path / "b")  # the resumed run's whole cost: the 5 steps before the resume are kept
    assert info["steps"] == 9 and info["config"]["batch_size"] == 4 and [r["step"] for r in info["log"]] == steps
    assert info["seconds"] == pytest.approx(sum(r["seconds"] for r in info["log"]))


def test_read_train_log(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DataError, match="train_config.json"):
        read_train_log(run)
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"objective": "cl", "batch_size": 2}))
    assert read_train_log(run) == {"steps": 0, "seconds": 0, "config": {"objective": "cl", "batch_size": 2}, "log": []}
    rows = [{"step": 1, "loss": 2.0, "seconds": 1.5}, {"step": 2, "loss": 1.0, "seconds": 2.25}]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')  # cut by a kill
    info = read_train_log(run)
    assert info["steps"] == 2 and info["seconds"] == 3.75 and info["log"] == rows


def _no_dropout(encoder):
    for module in encoder.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return encoder


def test_grad_cache_gives_the_same_update(tiny_bert, tmp_path):
    kw = dict(batch_size=6, n_negatives=2, lr=1e-3, epochs=1, max_steps=1, warmup_ratio=0.0, loss="mw", temperature=0.1)
    plain = train(_no_dropout(DualEncoder.from_pretrained(str(tiny_bert))), toy_examples(), tmp_path / "a",
                  TrainConfig(**kw), show_progress=False)
    cached = train(_no_dropout(DualEncoder.from_pretrained(str(tiny_bert))), toy_examples(), tmp_path / "b",
                   TrainConfig(**kw, grad_cache_chunk=4), show_progress=False)
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), cached.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_lora_trains_adapters_and_saves_merged_model(tiny_bert, tmp_path):
    enc = DualEncoder.from_pretrained(str(tiny_bert))
    base = {k: v.clone() for k, v in enc.model.state_dict().items()}
    trained = train(enc, toy_examples(), tmp_path / "out", TrainConfig(batch_size=4, lora=True, lora_r=4, lr=1e-2, epochs=2),
                    show_progress=False)
    saved = DualEncoder.from_pretrained(str(tmp_path / "out" / "model"))
    assert set(saved.model.state_dict()) == set(base)  # merged: plain weights, no adapter keys
    assert any(not torch.equal(base[k], v) for k, v in saved.model.state_dict().items())
    assert torch.allclose(torch.from_numpy(saved.encode(["x y"])), torch.from_numpy(trained.encode(["x y"])), atol=1e-5)


def test_bad_training_data(tmp_path):
    corpus = {"d1": {"title": "", "text": "one"}, "d2": {"title": "", "text": "two"}}
    path = tmp_path / "train.jsonl"
    path.write_text('{"query": "a", "positives": ["d1"], "negatives": ["d2", "nope"]}\n'
                    '{"query": "b", "positives": ["missing"], "negatives": ["d2"]}\n'
                    '{"query": "c", "positives": ["d2"], "negatives": []}\n')
    with pytest.warns(UserWarning) as record:
        got = ex.read_jsonl_examples(path, corpus, n_negatives=1)
    messages = " ".join(str(r.message) for r in record)
    assert "skipped 2 doc id(s) absent from the corpus" in messages
    assert "skipped 1 example(s) with no positives and 1 with no negatives" in messages
    assert got == [{"query": "a", "positives": ["one"], "negatives": ["two"]}]
    path.write_text('{"query": "a", "positives": ["zzz"]}\n')
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no usable training examples"):
        ex.read_jsonl_examples(path, corpus)
    path.write_text('{"positives": ["d1"]}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:1: needs 'query'"):
        ex.read_jsonl_examples(path, corpus)
    tsv = tmp_path / "triples.tsv"
    tsv.write_text("q\tpos\tneg\nq2\tonly two\n")
    with pytest.raises(DataError, match=r"triples\.tsv:2: expected query, positive, negative"):
        ex.read_triples(tsv)


def test_batches_are_deterministic_and_full():
    a = ex.batches(toy_examples(), 5, 2, seed=1, epoch=0)
    b = ex.batches(toy_examples(), 5, 2, seed=1, epoch=0)
    c = ex.batches(toy_examples(), 5, 2, seed=1, epoch=1)
    assert a == b and a != c and len(a) == 2 and all(len(x.queries) == 5 and all(len(n) == 2 for n in x.negatives) for x in a)


def test_crop_pairs_are_spans_of_the_document():
    corpus = {"d": {"title": "", "text": " ".join(f"w{i}" for i in range(100))}, "tiny": {"title": "", "text": "a b"}}
    pairs = ex.crop_pairs(corpus, random.Random(0))
    assert len(pairs) == 1
    for text in (pairs[0]["query"], pairs[0]["positives"][0]):
        assert text in corpus["d"]["text"] and 4 <= len(text.split()) <= 50
    assert pairs == ex.crop_pairs(corpus, random.Random(0))


def test_select_negatives_ranges_positives_and_margin(tmp_path):
    run = {"q": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d4": 0.6, "d5": 0.5, "q": 1.0}}
    qrels = {"q": {"d2": 1, "d4": 0}}
    assert select_negatives(run, qrels, 0, 10) == {"q": ["d1", "d3", "d4", "d5"]}  # self id and positive dropped
    assert select_negatives(run, qrels, 2, 4) == {"q": ["d3"]}  # ranks 2..3 are d2 (positive), d3
    assert select_negatives(run, qrels, 0, 10, positive_scores={"q": 0.8}, max_ratio=0.9) == {"q": ["d3", "d4", "d5"]}
    n = write_mined(tmp_path / "m.jsonl", {"q": "query"}, qrels, {"q": ["d3"]})
    assert n == 1 and json.loads((tmp_path / "m.jsonl").read_text()) == {"query_id": "q", "query": "query", "positives": ["d2"], "negatives": ["d3"]}


def test_cli_mine_then_train(tiny_beir, tiny_bert, tmp_path, capsys):
    assert main(["index", "build", "--data", str(tiny_beir), "--model", str(tiny_bert), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["mine", "--data", str(tiny_beir), "--split", "test", "--index", str(tmp_path / "idx"),
                 "--out", str(tmp_path / "neg.jsonl"), "--rank-from", "0", "--rank-to", "5", "--max-ratio", "2"]) == 0
    mined = json.loads(capsys.readouterr().out)
    assert mined["queries"] == 2 and mined["negatives"] == 6  # top-5 of 6 docs minus the 2 positives, per query
    assert main(["mine", "--data", str(tiny_beir), "--split", "test", "--out", str(tmp_path / "bm25.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["queries"] == 2
    assert main(["train", "retriever", "--data", str(tiny_beir), "--split", "test", "--model", str(tiny_bert),
                 "--negatives", str(tmp_path / "neg.jsonl"), "--loss", "mw", "--batch-size", "2", "--epochs", "2",
                 "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "model" / "modules.json").exists()
    assert main(["train", "retriever", "--data", str(tiny_beir), "--model", str(tiny_bert), "--unsupervised",
                 "--batch-size", "2", "--max-steps", "1", "--out", str(tmp_path / "unsup")]) == 0
    assert (tmp_path / "unsup" / "model" / "config.json").exists()
