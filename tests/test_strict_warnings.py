"""Issue 22: the suite fails on a deprecation warning that our calls trigger (pyproject's filterwarnings, plus
tests/conftest.py for deprecations that transformers only logs). These tests keep that mechanism from silently
going away; under `--no-strict-warnings` they are skipped."""
import inspect

import pytest
import torch


@pytest.fixture
def strict(request):
    if not request.config.getoption("strict_warnings"):
        pytest.skip("strict warnings are off (--no-strict-warnings)")


def _tiny_llama_layer():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)
    h = torch.randn(1, 3, 32)
    return LlamaDecoderLayer(config, 0), h, LlamaRotaryEmbedding(config)(h, torch.arange(3)[None])


def test_deprecated_decoder_layer_keyword_fails(strict):
    """The keyword BlockRank used to pass (`past_key_values=`, deprecated since transformers 5.24) now fails a test;
    the current one (`cache=`, what reranker/blockrank.py passes) does not warn."""
    layer, h, pe = _tiny_llama_layer()
    layer(h, position_embeddings=pe, cache=None)
    with pytest.raises(FutureWarning, match="past_key_values"):
        layer(h, position_embeddings=pe, past_key_values=None)


def test_blockrank_layers_take_the_current_cache_keyword():
    """pyproject's transformers floor (5.24) is where decoder layers take `cache=`: older ones would swallow it in
    **kwargs and BlockRank's blocks would silently lose the keys/values before them."""
    from densekit.reranker.blockrank import CACHE_ARG

    layer, _, _ = _tiny_llama_layer()
    assert CACHE_ARG in inspect.signature(layer.forward).parameters


def test_logged_deprecation_fails(strict, tiny_causal_lm):
    """A deprecation that transformers only logs (logger.warning_once) fails too: `torch_dtype=` in from_pretrained."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    with pytest.raises(FutureWarning, match="torch_dtype"):
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm, torch_dtype=torch.float32)


def test_logged_deprecation_from_peft_and_accelerate_loggers_fails(strict):
    import logging

    for name in ("peft.tuners.lora", "accelerate.utils"):
        with pytest.raises(FutureWarning, match="deprecated"):
            logging.getLogger(name).warning("`old_arg` is deprecated; use `new_arg`")
