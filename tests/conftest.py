import os
from pathlib import Path

import pytest

from eval.data import write_beir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def tiny_beir(tmp_path):
    """A 6-doc BEIR folder with test and train splits."""
    corpus = {
        "d1": {"title": "Cats", "text": "cats purr and sleep all day"},
        "d2": {"title": "Dogs", "text": "dogs bark at the mailman"},
        "d3": {"title": "Fish", "text": "fish swim in the sea"},
        "d4": {"title": "Birds", "text": "birds fly south in winter"},
        "d5": {"title": "", "text": "the sea is full of salt water and fish"},
        "d6": {"title": "Mice", "text": "cats chase mice"},
    }
    queries = {"q1": "why do cats purr", "q2": "where do fish swim", "q3": "birds in winter", "q9": "unjudged"}
    qrels = {
        "test": {"q1": {"d1": 1, "d6": 2}, "q2": {"d3": 2, "d5": 1, "d2": 0}},
        "train": {"q3": {"d4": 1}},
    }
    return write_beir(tmp_path / "tiny", corpus, queries, qrels)


def data_dir() -> Path:
    """$DENSEKIT_DATA, else ../shared/data beside the checkout; skip when neither exists."""
    root = Path(os.environ.get("DENSEKIT_DATA", SHARED_DATA))
    if not root.is_dir():
        pytest.skip("real BEIR data not available: set DENSEKIT_DATA to a folder of BEIR datasets")
    return root


@pytest.fixture
def beir_data():
    return data_dir()


MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _tiny_model_folder(root: Path, kind: str) -> Path:
    """A 2-layer random model (BERT encoder or Llama decoder) with the packaged MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaModel

    from retriever.models import resolve

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve(MINILM))
    if kind == "bert":
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512)
        model = BertModel(config)
    else:
        config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512,
                             pad_token_id=tokenizer.pad_token_id)
        model = LlamaModel(config)
    folder = root / f"tiny-{kind}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    return _tiny_model_folder(tmp_path_factory.mktemp("models"), "bert")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return _tiny_model_folder(tmp_path_factory.mktemp("models"), "llama")


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory):
    """A 2-layer random LlamaForCausalLM with the MiniLM tokenizer ("yes"/"no" are single tokens)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from retriever.models import resolve

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve(MINILM))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("models") / "tiny-causal"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
