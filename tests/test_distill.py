"""Issue 24: distillation of teacher scores into the dual encoder (Margin-MSE and listwise KL).

The losses against values written out by hand (with and without gathered negatives, in 1 and 2 processes);
teacher scores read from the training JSONL, malformed ones refused naming file and line, carried into the
batches with their documents; distillation on examples without teacher scores refused before any work; a
short training run; and one ``torchrun --nproc_per_node 2`` job (this file run as a script) whose gloo runs
equal the 1-process ones, for the losses on the hand example and for whole training runs (GradCache too).
"""
from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from densekit.retriever.losses import ListwiseKLLoss, MarginMSELoss
from test_distributed import encoder  # the tiny BERT without dropout (tests/ is on the path here and under torchrun)

HERE = Path(__file__).resolve()

# Hand example: B = 2 queries, 1 positive and n = 2 hard negatives each, D = 2.
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
POS = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
NEG = torch.tensor([[[0.0, 1.0], [0.6, 0.8]], [[1.0, 0.0], [0.8, 0.6]]])
# student scores q.d of each group [pos, neg1, neg2]: row 0 = [1, 0, 0.6]; row 1 = [0.8, 0, 0.6]
TEACHER = torch.tensor([[3.0, 1.0, 2.5], [2.0, 2.0, 0.0]])
# (pos, neg) margins, student vs teacher: row 0 (1, 0.4) vs (2, 0.5); row 1 (0.8, 0.2) vs (0, 2)
MARGIN_TERMS = [(1 - 2) ** 2, (0.4 - 0.5) ** 2, (0.8 - 0) ** 2, (0.2 - 2) ** 2]  # 1, 0.01, 0.64, 3.24
MARGIN_MSE = sum(MARGIN_TERMS) / 4  # 1.2225


def kl_row(teacher: list[float], student: list[float], tau_t: float, tau_s: float) -> float:
    """KL(p_t || p_s) of one group, from the definition."""
    zt = sum(math.exp(t / tau_t) for t in teacher)
    zs = sum(math.exp(s / tau_s) for s in student)
    p_t = [math.exp(t / tau_t) / zt for t in teacher]
    p_s = [math.exp(s / tau_s) / zs for s in student]
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s))


KL_TERMS = [kl_row([3, 1, 2.5], [1, 0, 0.6], 2.0, 0.5), kl_row([2, 2, 0], [0.8, 0, 0.6], 2.0, 0.5)]
KL = sum(KL_TERMS) / 2


def test_margin_mse_hand_computed():
    """Catches a wrong margin (sign, teacher/student swapped, the negative's score subtracted from the wrong side),
    a mean over queries instead of over (query, negative) pairs, or in-batch documents leaking into a group."""
    assert MARGIN_MSE == pytest.approx(1.2225)
    for gather in (False, True):  # one process: gathering changes nothing
        assert MarginMSELoss(gather=gather)(Q, POS, NEG, teacher=TEACHER).item() == pytest.approx(MARGIN_MSE, abs=1e-6)
    # a teacher offset per query changes no margin
    assert MarginMSELoss()(Q, POS, NEG, teacher=TEACHER + torch.tensor([[5.0], [-3.0]])).item() == \
        pytest.approx(MARGIN_MSE, abs=1e-5)
    # query 0's loss alone is its own two terms: the other query's documents are not in its group
    assert MarginMSELoss()(Q[:1], POS[:1], NEG[:1], teacher=TEACHER[:1]).item() == pytest.approx(1.01 / 2, abs=1e-6)
    # the student's scores are q.d / tau: at tau = 0.5 query 0's margins (1, 0.4) become (2, 0.8) against (2, 0.5)
    assert MarginMSELoss(0.5)(Q[:1], POS[:1], NEG[:1], teacher=TEACHER[:1]).item() == \
        pytest.approx(((2 - 2) ** 2 + (0.8 - 0.5) ** 2) / 2, abs=1e-6)


def test_listwise_kl_hand_computed():
    """Catches KL in the wrong direction (p_s || p_t), the temperatures swapped or unused, a softmax over the whole
    batch instead of the query's group, or a sum over queries instead of the mean."""
    # tau_t = 2: teacher row 0 logits [1.5, .5, 1.25]; tau_s = .5: student row 0 logits [2, 0, 1.2]
    assert KL_TERMS[0] == pytest.approx(kl_row([1.5, 0.5, 1.25], [2, 0, 1.2], 1, 1))
    for gather in (False, True):
        loss = ListwiseKLLoss(temperature=0.5, teacher_temperature=2.0, gather=gather)
        assert loss(Q, POS, NEG, teacher=TEACHER).item() == pytest.approx(KL, abs=1e-6)
    reverse = sum(kl_row(s, t, 1, 1) for t, s in ([[1.5, .5, 1.25], [2, 0, 1.2]], [[1, 1, 0], [1.6, 0, 1.2]])) / 2
    assert abs(reverse - KL) > 1e-3  # the direction matters on this example
    # a student that orders and spaces the group as the teacher does: zero loss
    same = ListwiseKLLoss(1.0, 1.0)(Q[:1], POS[:1], NEG[:1], teacher=torch.tensor([[1.0, 0.0, 0.6]]))
    assert same.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("loss", [MarginMSELoss(), ListwiseKLLoss(0.5, 2.0)])
def test_distill_gradients_match_finite_differences(loss):
    """Catches a detached score (no gradient reaching a query, positive or negative) or a wrong backward."""
    torch.manual_seed(1)
    q, p, n = (torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((3, 4), (3, 4), (3, 2, 4)))
    teacher = torch.randn(3, 3, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda a, b, c: loss(a, b, c, teacher=teacher), (q, p, n))


@pytest.mark.parametrize("loss", [MarginMSELoss(), ListwiseKLLoss()])
def test_distill_losses_refuse_missing_teacher_or_negatives(loss):
    """Catches a distillation loss that silently trains on nothing (no teacher scores, no negatives, misaligned)."""
    with pytest.raises(ValueError, match="teacher"):
        loss(Q, POS, NEG)
    with pytest.raises(ValueError, match="hard negatives"):
        loss(Q, POS, None, teacher=TEACHER[:, :1])
    with pytest.raises(ValueError, match=r"shape \(2, 2\), the group is \(2, 3\)"):
        loss(Q, POS, NEG, teacher=TEACHER[:, :2])


# ---------------------------------------------------------------- the training file and the batches
def test_read_teacher_scores_follow_their_documents(tmp_path):
    """Catches scores misaligned with their documents after absent doc ids are skipped, or lost on reading."""
    from densekit.retriever.examples import read_jsonl_examples

    corpus = {f"d{i}": {"title": "", "text": f"text {i}"} for i in range(1, 5)}
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"query": "a", "positives": ["d1", "gone"], "negatives": ["d2", "nope", "d3"],
                                "positive_scores": [9, 8.5], "negative_scores": [2.5, 1.0, -0.5]}) + "\n"
                    + json.dumps({"query": "b", "positives": ["d4"], "negatives": ["d1"]}) + "\n")
    with pytest.warns(UserWarning, match="skipped 2 doc id"):
        got = read_jsonl_examples(path, corpus, n_negatives=1)
    assert got == [{"query": "a", "positives": ["text 1"], "negatives": ["text 2", "text 3"],
                    "positive_scores": [9.0], "negative_scores": [2.5, -0.5]},
                   {"query": "b", "positives": ["text 4"], "negatives": ["text 1"]}]  # no scores: none invented


@pytest.mark.parametrize("line, message", [
    ({"positive_scores": [1.0], "negative_scores": [0.5]}, r"1 'negative_scores' for 2 'negatives'"),
    ({"positive_scores": [1.0, 2.0], "negative_scores": [0.5, 0.1]}, r"2 'positive_scores' for 1 'positives'"),
    ({"positive_scores": [1.0], "negative_scores": [0.5, "NaN"]}, r"'negative_scores' holds nan: teacher scores must be finite"),
    ({"positive_scores": [1.0], "negative_scores": [0.5, "Infinity"]}, r"holds inf"),
    ({"positive_scores": ["9"], "negative_scores": [0.5, 0.1]}, r"'positive_scores' holds '9'"),
    ({"positive_scores": [True], "negative_scores": [0.5, 0.1]}, r"holds True"),
    ({"positive_scores": 1.0, "negative_scores": [0.5, 0.1]}, r"'positive_scores' must be a list"),
    ({"positive_scores": [1.0]}, r"'positive_scores' without 'negative_scores'"),
    ({"negative_scores": [0.5, 0.1]}, r"'negative_scores' without 'positive_scores'"),
])
def test_malformed_teacher_scores_are_refused_naming_file_and_line(tmp_path, line, message):
    """Catches a malformed score file that trains anyway: scores shifted against their documents, NaN/inf (a NaN
    loss many steps later), strings or booleans taken as numbers, half the scores silently ignored."""
    from densekit.retriever.examples import TrainDataError, read_jsonl_examples

    path = tmp_path / "scores.jsonl"
    row = {"query": "a", "positives": ["p"], "negatives": ["n1", "n2"], **line}
    text = json.dumps(row).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")  # JSON's non-finite literals
    path.write_text(json.dumps({"query": "ok", "positives": ["p"], "negatives": ["n"]}) + "\n" + text + "\n")
    with pytest.raises(TrainDataError, match=r"scores\.jsonl:2: .*(" + message + ")"):
        read_jsonl_examples(path, n_negatives=1)


def test_batches_carry_the_scores_of_the_drawn_documents():
    """Catches a batch whose teacher scores belong to other documents than the ones drawn (positive choice,
    negatives sampled with or without replacement), lost when a batch is split over processes, or a data order
    that changed for examples without scores (a resumed run must see the data it would have seen)."""
    from densekit.retriever.examples import batches

    rng = random.Random(5)
    examples = []
    for i in range(10):
        n_pos, n_neg = rng.randint(1, 3), rng.randint(1, 4)  # some with fewer negatives than drawn (replacement)
        examples.append({"query": f"q{i}", "positives": [f"p{i}-{k}" for k in range(n_pos)],
                         "negatives": [f"n{i}-{k}" for k in range(n_neg)],
                         "positive_scores": [100 * i + k for k in range(n_pos)],
                         "negative_scores": [-100 * i - k for k in range(n_neg)]})
    got = batches(examples, 5, 3, seed=3, epoch=1)
    for batch in got:
        assert len(batch.positive_scores) == 5 and all(len(s) == 3 for s in batch.negative_scores)
        for p, s in zip(batch.positives, batch.positive_scores):
            i, k = map(int, p[1:].split("-"))
            assert s == 100 * i + k
        for negs, scores in zip(batch.negatives, batch.negative_scores):
            assert [-100 * int(d[1:].split("-")[0]) - int(d.split("-")[1]) for d in negs] == scores
        half = batch[slice(2, 4)]  # a process's share
        assert half.positive_scores == batch.positive_scores[2:4] and half.negative_scores == batch.negative_scores[2:4]
    # the documents drawn are the ones the draw without scores picks (rng.choice / rng.sample of the lists)
    bare = [{k: e[k] for k in ("query", "positives", "negatives")} for e in examples]
    reference = random.Random(3 * 1_000_003 + 1)
    order = list(range(10))
    reference.shuffle(order)
    for start, batch in zip((0, 5), batches(bare, 5, 3, seed=3, epoch=1)):
        chosen = [bare[i] for i in order[start:start + 5]]
        assert batch.positives == [reference.choice(e["positives"]) for e in chosen]
        assert batch.negatives == [reference.sample(e["negatives"], 3) if len(e["negatives"]) >= 3
                                   else [reference.choice(e["negatives"]) for _ in range(3)] for e in chosen]
        assert batch.positive_scores is None and batch.negative_scores is None
    assert [b.positives for b in got] == [b.positives for b in batches(bare, 5, 3, seed=3, epoch=1)]


# ---------------------------------------------------------------- training
TOPICS = ["cats", "dogs", "fish", "birds", "trees", "rivers", "stars", "trains", "books", "music", "bread", "snow"]


def scored_examples():
    """The toy examples with teacher scores: the positive high, the negatives spread below it."""
    return [{"query": f"about {t}", "positives": [f"{t} {t} are described here"],
             "negatives": [f"{o} {o} are described here" for o in TOPICS if o != t][:3],
             "positive_scores": [0.9], "negative_scores": [0.1 * (j % 4), -0.2, 0.3 - 0.05 * j]} for j, t in enumerate(TOPICS)]


def distill_configs():
    from densekit.retriever.config import TrainConfig

    return {
        # 2 micro-batches a step (accumulation) and GradCache
        "margin-mse": TrainConfig(loss="margin-mse", batch_size=2, grad_accum=2, n_negatives=2, lr=1e-3, epochs=1,
                                  warmup_ratio=0.0, grad_cache_chunk=3, checkpoint_every=100),
        "kl": TrainConfig(loss="kl", batch_size=4, n_negatives=3, lr=1e-3, epochs=1, warmup_ratio=0.5, temperature=0.1,
                          teacher_temperature=0.5, checkpoint_every=100),
    }


def test_margin_mse_training_runs_and_changes_weights(tiny_bert, tmp_path):
    """Catches a distillation loss whose gradient never reaches the encoder (teacher scores wired as constants
    in place of the student's, a detached score), or a training step that cannot hand the loss its scores."""
    from densekit.retriever.config import TrainConfig
    from densekit.retriever.train import train

    enc = encoder(tiny_bert)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    config = TrainConfig(loss="margin-mse", batch_size=4, n_negatives=2, lr=1e-3, max_steps=2, warmup_ratio=0.0)
    trained = train(enc, scored_examples(), tmp_path / "run", config, show_progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in log)
    changed = [k for k, v in trained.model.state_dict().items() if not torch.equal(before[k], v)]
    assert any("encoder.layer.0." in k for k in changed) and any("embeddings" in k for k in changed)
    assert (tmp_path / "run" / "model" / "modules.json").exists()


def test_kl_grad_cache_gives_the_same_update(tiny_bert, tmp_path):
    """Catches GradCache handing the loss no (or misaligned) teacher scores: the cached step must equal the plain one."""
    import dataclasses

    from densekit.retriever.train import train

    config = dataclasses.replace(distill_configs()["kl"], max_steps=1)
    plain = train(encoder(tiny_bert), scored_examples(), tmp_path / "a", config, show_progress=False)
    cached = train(encoder(tiny_bert), scored_examples(), tmp_path / "b", dataclasses.replace(config, grad_cache_chunk=5),
                   show_progress=False)
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), cached.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_distillation_without_teacher_scores_is_refused_before_any_work(tiny_bert, tiny_beir, tmp_path, capsys):
    """Catches training that starts (loads a model, claims the folder) and then fails or trains on garbage because
    the examples have no teacher scores; and the CLI accepting --loss kl with a source that cannot carry them."""
    from densekit.eval import jobs
    from densekit.eval.cli import main
    from densekit.retriever.config import TrainConfig
    from densekit.retriever.examples import TrainDataError
    from densekit.retriever.train import train

    examples = scored_examples()
    del examples[3]["positive_scores"], examples[3]["negative_scores"]
    for loss in ("margin-mse", "kl"):
        with pytest.raises(TrainDataError, match=rf"--loss {loss} distils teacher scores, but 1 of 12 training example"):
            train(encoder(tiny_bert), examples, tmp_path / loss, TrainConfig(loss=loss, batch_size=4), show_progress=False)
        assert not (tmp_path / loss).exists()
    with pytest.raises(ValueError, match="needs --n-negatives >= 1"):
        TrainConfig(loss="kl", n_negatives=0)
    # the job: refused before the model loads (a model that does not exist is never reached)
    path = tmp_path / "mined.jsonl"
    path.write_text('{"query_id": "q3", "positives": ["d4"], "negatives": ["d1", "d2"]}\n')
    with pytest.raises(TrainDataError, match="1 of 1 training example"):
        jobs.train_retriever(str(tiny_beir), str(tmp_path / "job"), TrainConfig(loss="kl"), "no/such-model", train_file=str(path))
    with pytest.raises(ValueError, match="only a --train-file carries"):
        jobs.train_retriever(str(tiny_beir), str(tmp_path / "job"), TrainConfig(loss="margin-mse"), "no/such-model")
    assert not (tmp_path / "job").exists()
    base = ["train", "retriever", "--data", str(tiny_beir), "--out", str(tmp_path / "cli")]
    for argv, error in ((["--loss", "kl"], "--loss kl distils teacher scores: train from a --train-file"),
                        (["--teacher-temperature", "2"], "--teacher-temperature is ignored with --loss infonce"),
                        (["--loss", "margin-mse", "--train-file", str(path), "--symmetric"], "--symmetric is ignored")):
        with pytest.raises(SystemExit) as exit_info:
            main(base + argv)
        assert exit_info.value.code == 2 and error in capsys.readouterr().err
    assert main(base + ["--loss", "kl", "--train-file", str(path), "--model", "no/such-model"]) == 2
    assert "1 of 1 training example(s) carry none" in capsys.readouterr().err


# ---------------------------------------------------------------- 2 processes (gloo) == 1 process
def _worker(root: str, bert: str) -> None:
    """Under torchrun: each rank takes its half of the hand example (row ``rank``) and of every training batch."""
    torch.set_num_threads(1)
    from densekit.retriever.train import train

    root = Path(root)
    from densekit.core.engine import process_count

    rank = int(os.environ["RANK"])
    assert process_count() == 2  # accelerate sets up the gloo process group, as for training
    rows = slice(rank, rank + 1)
    hand = {}
    for name, loss in (("margin-mse", MarginMSELoss(gather=True)), ("kl", ListwiseKLLoss(0.5, 2.0, gather=True)),
                       ("margin-mse-local", MarginMSELoss(gather=False)), ("kl-local", ListwiseKLLoss(0.5, 2.0, gather=False))):
        q, p, n = (t[rows].clone().requires_grad_() for t in (Q, POS, NEG))
        value = loss(q, p, n, teacher=TEACHER[rows])
        value.backward()
        hand[name] = {"loss": value.item(), "grads": [t.grad.tolist() for t in (q, p, n)]}
    (root / f"hand-rank{rank}.json").write_text(json.dumps(hand))
    for name, config in distill_configs().items():
        enc = train(encoder(bert), scored_examples(), root / name, config, show_progress=False)
        torch.save(enc.model.state_dict(), root / name / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("distill-two-processes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HERE), str(root), str(tiny_bert)]
    done = subprocess.run(cmd, env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return root


@pytest.mark.parametrize("name", ["margin-mse", "kl"])
def test_two_processes_give_the_hand_value_and_gradients(two, name):
    """Catches a distributed loss that is not ``world x`` this process's share of the global mean (DDP averages
    the gradients): each rank's value is 2 x its own terms / the global count, their mean is the hand value, and
    each rank's input gradients are 2 x the 1-process gradients of its rows, gathered or not."""
    loss = MarginMSELoss() if name == "margin-mse" else ListwiseKLLoss(0.5, 2.0)
    q, p, n = (t.clone().requires_grad_() for t in (Q, POS, NEG))
    loss(q, p, n, teacher=TEACHER).backward()
    ranks = [json.loads((two / f"hand-rank{r}.json").read_text()) for r in (0, 1)]
    own = [sum(MARGIN_TERMS[:2]) / 4, sum(MARGIN_TERMS[2:]) / 4] if name == "margin-mse" else [KL_TERMS[0] / 2, KL_TERMS[1] / 2]
    for variant in (name, f"{name}-local"):
        values = [r[variant]["loss"] for r in ranks]
        assert values == pytest.approx([2 * own[0], 2 * own[1]], abs=1e-6)
        assert sum(values) / 2 == pytest.approx(MARGIN_MSE if name == "margin-mse" else KL, abs=1e-6)
        for rank, r in enumerate(ranks):
            for got, full in zip(r[variant]["grads"], (q.grad, p.grad, n.grad)):
                assert torch.allclose(torch.tensor(got), 2 * full[rank:rank + 1], atol=1e-6)


@pytest.mark.parametrize("name", ["margin-mse", "kl"])
def test_two_processes_of_b_train_as_one_process_of_2b(two, tiny_bert, tmp_path, name):
    """Catches teacher scores that do not follow a process's share of the batch (rank 1 scoring its documents with
    rank 0's scores), or a distributed mean that differs from the 1-process one: both ranks hold the parameters of
    the 1-process run of the same global batch, and log the same losses."""
    from densekit.retriever.train import train

    one = train(encoder(tiny_bert), scored_examples(), tmp_path / name, distill_configs()[name], show_progress=False)
    r0, r1 = (torch.load(two / name / f"rank{r}.pt") for r in (0, 1))
    reference = one.model.state_dict()
    assert r0.keys() == r1.keys() == reference.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key
        assert (r0[key].float() - reference[key].float()).abs().max().item() <= 1e-5, key
    log = lambda folder: [json.loads(l) for l in (folder / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = log(two / name), log(tmp_path / name)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(b) == 3
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
