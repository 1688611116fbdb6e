"""Where loaded models run (``densekit.core.device.inference_device``): the GPU when torch sees one, the launcher's
local rank choosing among several; ``DENSEKIT_DEVICE`` overrides, and a device torch cannot use is refused before any
model loads, in the API and the CLI (``index build --device`` goes through the same function: test_safety_round3). Guards: models loaded for encoding and scoring that stay on the CPU on a GPU
machine (densekit before issue 26: `densekit eval` never used a GPU)."""
from __future__ import annotations

import pytest
import torch

from densekit.core import device
from densekit.eval.cli import main


def test_the_gpu_when_torch_sees_one_and_the_local_rank_picks_it(monkeypatch):
    monkeypatch.delenv("DENSEKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.inference_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert device.inference_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device.inference_device() == torch.device("cuda", 1)
    monkeypatch.setenv("DENSEKIT_DEVICE", "cpu")
    assert device.inference_device() == torch.device("cpu")


@pytest.mark.parametrize("value, message", [("tpu9", "is not a torch device"), ("cuda", "no CUDA device"),
                                            ("meta", "densekit runs models on")])
def test_an_unusable_device_is_refused_before_any_model_loads(value, message, monkeypatch, tiny_bert, tiny_causal_lm):
    import transformers

    from densekit.reranker.pointwise import LLMReranker
    from densekit.retriever.encoder import DualEncoder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DENSEKIT_DEVICE", value)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(ValueError, match=message):
        DualEncoder.from_pretrained(str(tiny_bert))
    with pytest.raises(ValueError, match=message):
        LLMReranker.from_pretrained(str(tiny_causal_lm))


def test_the_cli_refuses_it_before_any_work(monkeypatch, tiny_beir, tmp_path, capsys):
    monkeypatch.setenv("DENSEKIT_DEVICE", "cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run.trec"
    assert main(["eval", "--data", str(tiny_beir), "--retriever", "bm25", "--save-run", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("densekit: error: DENSEKIT_DEVICE 'cuda:3'") and not out.exists()


def test_loaded_models_land_on_that_device(monkeypatch, tiny_bert, tiny_causal_lm):
    from densekit.reranker.pointwise import LLMReranker
    from densekit.retriever.encoder import DualEncoder

    monkeypatch.setenv("DENSEKIT_DEVICE", "cpu")
    moved = []
    real = torch.nn.Module.to
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a[0] if a else k.get("device")) or real(self, *a, **k))
    DualEncoder.from_pretrained(str(tiny_bert))
    LLMReranker.from_pretrained(str(tiny_causal_lm))
    assert moved.count(torch.device("cpu")) >= 2


def test_the_api_takes_a_device_argument_and_checks_it_first(monkeypatch, tiny_bert, tiny_causal_lm):
    from densekit.reranker.pointwise import LLMReranker
    from densekit.retriever.encoder import DualEncoder

    monkeypatch.delenv("DENSEKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for load in (DualEncoder.from_pretrained, LLMReranker.from_pretrained):
        with pytest.raises(ValueError, match="--device 'cuda:1': this machine has no CUDA device"):
            load(str(tiny_bert if load is DualEncoder.from_pretrained else tiny_causal_lm), device="cuda:1")
    reranker = LLMReranker.from_pretrained(str(tiny_causal_lm), device="cpu")
    assert next(reranker.model.parameters()).device == torch.device("cpu")
