import json
import logging
import os
import re
import warnings
from pathlib import Path

import pytest

from densekit.eval.data import write_beir

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------ strict warnings (issue 22)
# pyproject's [tool.pytest.ini_options] filterwarnings turns DeprecationWarning, PendingDeprecationWarning and
# FutureWarning into errors (with a short ignore list for third-party internals). Libraries that *log* a deprecation
# (transformers' logger.warning_once, e.g. "`torch_dtype` is deprecated! Use `dtype` instead!") are caught here: such
# a record becomes a LoggedDeprecationWarning (a FutureWarning) raised at the logging call, so it fails the same way.
# Off: `python -m pytest --no-strict-warnings` (drops the "error" filters; the warnings are then only reported), or
# override single categories with `-W default::FutureWarning` (command-line filters win over the ini ones).
LOGGED_DEPRECATION_SOURCES = ("transformers", "peft", "accelerate")
_DEPRECATED = re.compile(r"deprecat", re.IGNORECASE)


class LoggedDeprecationWarning(FutureWarning):
    """A deprecation notice that transformers, peft or accelerate logged instead of warning."""


class _DeprecationLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _DEPRECATED.search(message):
            warnings.warn(f"[logged by {record.name}] {message}", LoggedDeprecationWarning)


_LOG_HANDLER = _DeprecationLogHandler(level=logging.WARNING)


def pytest_addoption(parser):
    parser.addoption("--no-strict-warnings", action="store_false", dest="strict_warnings", default=True,
                     help="report deprecation warnings instead of failing on them (densekit: issue 22)")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    # Before pytest_configure: pytest applies the ini filters for the whole session just before configuring.
    if not config.getoption("strict_warnings"):
        filters = config.getini("filterwarnings")  # pytest's cached list (what config.addinivalue_line edits)
        filters[:] = [f for f in filters if f.split(":", 1)[0].strip() != "error"]


def pytest_configure(config):
    for name in LOGGED_DEPRECATION_SOURCES:
        logging.getLogger(name).addHandler(_LOG_HANDLER)


def pytest_unconfigure(config):
    for name in LOGGED_DEPRECATION_SOURCES:
        logging.getLogger(name).removeHandler(_LOG_HANDLER)


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

    from densekit.core.models import resolve

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

    from densekit.core.models import resolve

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve(MINILM))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("models") / "tiny-causal"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rerank_order_problem(first: dict, reranked: dict, corpus: dict, queries: dict, reranker, top_k: int,
                         mode: str | None = None, min_gap: float = 1e-5) -> str | None:
    """None when ``reranked`` (a saved run) is what ``reranker`` itself orders; else a message naming the query.

    Per query of ``first`` (the first-stage run): its top ``top_k`` docs (those in the corpus) are scored here by
    ``reranker.score_groups``, one query at a time. Those scores must tell every two docs apart (gap > ``min_gap``:
    a constant-score reranker orders nothing, so any order would "agree" with it), the saved run must hold them
    (within 1e-4) and rank the docs in their order, and the docs below ``top_k`` must follow in first-stage order."""
    from densekit.core.runs import rank
    from densekit.core.text import doc_text

    for qid, docs in first.items():
        ranking = rank(docs)
        head = [d for d in ranking[:top_k] if d in corpus]
        if not head:
            continue
        scores = [float(s) for s in reranker.score_groups([(queries[qid], [doc_text(corpus[d]) for d in head])], mode=mode)[0]]
        ordered = sorted(scores)
        if len(scores) > 1 and min(b - a for a, b in zip(ordered, ordered[1:])) <= min_gap:
            return f"query {qid}: the reranker's scores {scores} do not order its top {top_k} (ties)"
        saved = reranked.get(qid, {})
        if any(d not in saved or abs(saved[d] - s) > 1e-4 for d, s in zip(head, scores)):
            return f"query {qid}: saved scores {[saved.get(d) for d in head]} are not the reranker's {scores}"
        expected = rank(dict(zip(head, scores))) + ranking[top_k:]
        if rank(saved) != expected:
            return f"query {qid}: saved order {rank(saved)}, the reranker's own order {expected}"
    return None


def cli_rerank_problem(tiny_beir, tmp_path, capsys, spec: str, top_k: int = 3, mode: str | None = None) -> str | None:
    """``densekit eval`` BM25 top 6, then again reranking the top ``top_k`` with ``spec``, both runs saved; recall@6
    must not change, and ``rerank_order_problem`` of the saved runs against the reranker loaded from ``spec``."""
    from densekit.eval.cli import main
    from densekit.eval.data import load_dataset
    from densekit.eval.runfile import read_run
    from densekit.reranker.base import load_reranker

    plain_path, reranked_path = tmp_path / "plain.trec", tmp_path / "reranked.trec"
    base = ["eval", "--data", str(tiny_beir), "--retriever", "bm25", "--top-k", "6", "--json", "--overwrite"]
    assert main(base + ["--save-run", str(plain_path)]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(base + ["--save-run", str(reranked_path), "--reranker", spec, "--rerank-top-k", str(top_k)]
                + (["--rerank-mode", mode] if mode else [])) == 0
    reranked = json.loads(capsys.readouterr().out)
    assert reranked["recall@6"] == plain["recall@6"]  # reranking the top 3 of 6 cannot change recall@6
    ds = load_dataset(tiny_beir, "test")
    return rerank_order_problem(read_run(plain_path), read_run(reranked_path), ds.corpus, ds.queries,
                                load_reranker(spec), top_k, mode)


@pytest.fixture
def serve_zip():
    """``serve(folder, name) -> (url, md5)``: ``folder`` zipped as ``<name>/...`` (the layout of the official BEIR zips)
    and served at ``url`` by an HTTP server on the loopback address (offline download tests)."""
    import hashlib
    import http.server
    import io
    import threading
    import zipfile

    servers = []

    def serve(folder: Path, name: str) -> tuple[str, str]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for path in Path(folder).rglob("*"):
                if path.is_file():
                    zf.write(path, f"{name}/{path.relative_to(folder)}")
        payload = buf.getvalue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/{name}.zip", hashlib.md5(payload).hexdigest()

    yield serve
    for server in servers:
        server.shutdown()
