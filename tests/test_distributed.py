"""Multi-process training (issue 13): 2 CPU processes with gloo, launched by ``torchrun`` as a user would.

One ``torchrun --nproc_per_node 2`` job (this file run as a script) trains every 2-process case; a
second job resumes an interrupted one. The tests compare them with 1-process runs of the same configs
in the pytest process: identical parameters on both ranks; 2 processes x B (gathered negatives) ==
1 process x 2B; the same learning-rate schedule; interrupted + resumed == uninterrupted; the same for
reranker training; a batch that does not divide -> a clear error before any work; a resume with
another process count -> refused.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
TOPICS = ["cats", "dogs", "fish", "birds", "trees", "rivers", "stars", "trains", "books", "music", "bread", "snow"]


def toy_examples():
    # negatives are other queries' positives: duplicates across rows (and processes) that the key mask must drop
    return [{"query": f"about {t}", "positives": [f"{t} {t} are described here"],
             "negatives": [f"{o} {o} are described here" for o in TOPICS if o != t][:3]} for t in TOPICS]


def toy_groups():
    return [{"query": f"{t} {t}", "positives": [f"{t} {t} {t}"], "negatives": [f"{o} {o}" for o in "abcdefg" if o != t]}
            for t in "abcdefg"]


def retriever_configs():
    from densekit.retriever.config import TrainConfig

    return {
        # InfoNCE both directions, hard negatives, warm-up then decay, a checkpoint every 2 steps
        "infonce": TrainConfig(loss="infonce", symmetric=True, batch_size=4, n_negatives=1, lr=1e-3, epochs=2,
                               warmup_ratio=0.5, temperature=0.1, checkpoint_every=2),
        # MW global pairs, 2 micro-batches a step (accumulation), GradCache
        "mw": TrainConfig(loss="mw", batch_size=2, grad_accum=2, n_negatives=2, lr=1e-3, epochs=1, warmup_ratio=0.0,
                          temperature=0.1, grad_cache_chunk=3, checkpoint_every=100),
    }


def reranker_config():
    from densekit.reranker.config import RerankTrainConfig

    return RerankTrainConfig(objective="cl", group_size=3, batch_size=4, micro_batch=1, lr=5e-3, epochs=2, lora_r=4,
                             lora_dropout=0.0, temperature=0.5, warmup_ratio=0.5, checkpoint_every=100)


def encoder(path):
    """The tiny BERT without dropout, so that runs compare exactly."""
    from densekit.retriever.encoder import DualEncoder

    enc = DualEncoder.from_pretrained(str(path))
    for module in enc.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return enc


def reranker(path):
    from densekit.reranker.config import QLMConfig
    from densekit.reranker.qlm import QLMReranker

    return QLMReranker.from_pretrained(str(path), QLMConfig(doc_max_tokens=16))


def lora_params(rr) -> dict:
    return {n: p.detach().clone() for n, p in rr.model.named_parameters() if "lora_" in n}


# ---------------------------------------------------------------- the torchrun worker
def _worker(phase: str, root: str, bert: str, causal: str) -> None:
    torch.set_num_threads(1)
    root = Path(root)
    from densekit.reranker.train import train_reranker
    from densekit.retriever.config import TrainConfig
    from densekit.retriever.train import train

    rank = int(os.environ["RANK"])
    if phase == "first":
        for name, config in retriever_configs().items():
            enc = train(encoder(bert), toy_examples(), root / name, config, show_progress=False)
            torch.save(enc.model.state_dict(), root / name / f"rank{rank}.pt")
        train(encoder(bert), toy_examples(), root / "interrupted", retriever_configs()["infonce"], show_progress=False,
              stop_after=3)
        rr = train_reranker(reranker(causal), toy_groups(), root / "reranker", reranker_config(), show_progress=False)
        torch.save(lora_params(rr), root / "reranker" / f"rank{rank}.pt")
        try:
            train(encoder(bert), toy_examples(), root / "odd", TrainConfig(batch_size=3), show_progress=False)
        except ValueError as err:
            (root / f"odd-error-rank{rank}.txt").write_text(str(err))
    else:  # a new launch resumes the interrupted run
        enc = train(encoder(bert), toy_examples(), root / "interrupted", retriever_configs()["infonce"], resume=True,
                    show_progress=False)
        torch.save(enc.model.state_dict(), root / "interrupted" / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(phase: str, root: Path, bert, causal) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HERE), phase, str(root), str(bert), str(causal)]
    done = subprocess.run(cmd, env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def two(tmp_path_factory, tiny_bert, tiny_causal_lm):
    root = tmp_path_factory.mktemp("two-processes")
    _torchrun("first", root, tiny_bert, tiny_causal_lm)
    _torchrun("resume", root, tiny_bert, tiny_causal_lm)
    return root


@pytest.fixture(scope="module")
def one(tmp_path_factory, tiny_bert, tiny_causal_lm):
    """The same configs in one process: the reference."""
    from densekit.reranker.train import train_reranker
    from densekit.retriever.train import train

    root = tmp_path_factory.mktemp("one-process")
    got = {}
    for name, config in retriever_configs().items():
        got[name] = train(encoder(tiny_bert), toy_examples(), root / name, config, show_progress=False).model.state_dict()
    got["reranker"] = lora_params(train_reranker(reranker(tiny_causal_lm), toy_groups(), root / "reranker",
                                                 reranker_config(), show_progress=False))
    got["root"] = root
    return got


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def _close(a: dict, b: dict, atol: float) -> float:
    assert a.keys() == b.keys() and a
    worst = 0.0
    for key in a:
        worst = max(worst, (a[key].float() - b[key].float()).abs().max().item())
    assert worst <= atol, worst
    return worst


@pytest.mark.parametrize("name", ["infonce", "mw", "reranker", "interrupted"])
def test_both_ranks_hold_identical_parameters(two, name):
    r0, r1 = (torch.load(two / name / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key


@pytest.mark.parametrize("name", ["infonce", "mw", "reranker"])
def test_two_processes_of_b_equal_one_process_of_2b(two, one, name):
    """Global batch 2B over 2 processes (B each; gathered negatives for the retriever) == 1 process x 2B."""
    trained = torch.load(two / name / "rank0.pt")
    _close(trained, one[name], atol=1e-5)
    if name == "reranker":  # LoRA B starts at zero: the adapters really trained
        assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)


@pytest.mark.parametrize("name", ["infonce", "mw", "reranker"])
def test_schedule_and_logged_loss_equal_the_one_process_run(two, one, name):
    a, b = _log(two / name), _log(one["root"] / name)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, len(b) + 1))
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b], rel=1e-12)  # stepped once per optimizer step
    assert b[-1]["lr"] == 0.0 and max(r["lr"] for r in b) > 0
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)  # averaged over processes


def test_interrupted_two_process_run_resumes_exactly(two):
    assert sorted(p.name for p in (two / "interrupted" / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    for rank in (0, 1):
        _close(torch.load(two / "interrupted" / f"rank{rank}.pt"), torch.load(two / "infonce" / f"rank{rank}.pt"), atol=1e-6)
    assert [r["step"] for r in _log(two / "interrupted")] == list(range(1, 7))
    state = json.loads((two / "interrupted" / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["processes"] == 2
    assert {p.name for p in (two / "interrupted" / "checkpoints" / "step-000006").glob("random_states_*.pkl")} == \
        {"random_states_0.pkl", "random_states_1.pkl"}  # every rank's RNG


def test_batch_not_divisible_by_the_processes_is_refused_before_any_work(two):
    for rank in (0, 1):
        message = (two / f"odd-error-rank{rank}.txt").read_text()
        assert "does not split over 2 processes" in message and "--batch-size divisible by 2" in message
    assert not (two / "odd").exists()


def test_resume_with_another_process_count_is_refused(two, tiny_bert, tmp_path):
    import shutil

    from densekit.core.io import OutputExistsError
    from densekit.retriever.train import train

    out = tmp_path / "copy"
    shutil.copytree(two / "interrupted", out)
    shutil.rmtree(out / "model")
    with pytest.raises(OutputExistsError, match=r"trained by 2 process\(es\), this launch has 1"):
        train(encoder(tiny_bert), toy_examples(), out, retriever_configs()["infonce"], resume=True, show_progress=False)


def test_engine_accumulation_weights_micro_batches_by_their_share(tiny_causal_lm, tmp_path):
    """4 groups a step in uneven micro-batches (3 + 1, weighted 3/4 and 1/4) train the model of one pass of 4."""
    import dataclasses

    from densekit.reranker.train import train_reranker

    got = []
    for micro in (None, 3):
        config = dataclasses.replace(reranker_config(), micro_batch=micro, warmup_ratio=0.0)  # 3 steps
        got.append(lora_params(train_reranker(reranker(tiny_causal_lm), toy_groups(), tmp_path / str(micro), config,
                                              show_progress=False)))
    _close(got[0], got[1], atol=1e-6)
    assert any(v.abs().max() > 1e-4 for k, v in got[1].items() if "lora_B" in k)  # trained (LoRA B starts at 0)


if __name__ == "__main__":
    _worker(*sys.argv[1:])
