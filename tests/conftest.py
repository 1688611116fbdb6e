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
