"""One GPU run: densekit's correctness on CUDA and its speed against the peers, in one script of a few minutes.

Every model is built with random weights from a published configuration (all-MiniLM-L6-v2, SmolLM2-135M,
Gemma-3-270M, Mistral-7B-v0.3: ``CONFIGS``): kernels, dtypes and speed do not depend on trained weights, so no download
is needed. Text comes from the real tokenizers of all-MiniLM-L6-v2 and SmolLM2 (words of their own vocabularies,
so a word is about one token). Each check writes JSON lines (``"check"`` names it); one that fails writes its
error and the run goes on.

Correctness on the device (``pass`` per row, the tolerance in the row):

- ``blockrank_reference``: BlockRank's efficient path (instruction prefill, doc blocks batched, query over the
  concatenated keys/values) against ``BlockRanker.reference_forward`` (the whole prompt, the dense block mask,
  eager attention) for the Llama (SmolLM2), Mistral-7B and Gemma-3 (sliding + full layers) configurations, in
  float32 and bf16: per-document attention mass (max abs difference) and the scoring layer's hidden states
  (relative Frobenius error);
- ``encoder_device``: the encoder's embeddings on the device against the CPU's (float32; bf16 by cosine after removing
  the batch mean, each row closest to its own text), and a
  loaded encoder lands on the GPU by itself (``core.device.inference_device``);
- ``retriever_bf16_step``: one optimizer step of ``densekit.retriever.train.train`` with bf16 autocast against the
  float32 step from the same weights, dropout off (first-step loss, cosine of the weight updates);
- ``reranker_bf16_step``: LoRA steps of ``train_reranker`` (yes/no SFT and BlockRank) under bf16: finite losses,
  first-step loss changed by autocast yet within bf16 rounding of float32, adapters moved.

Speed (same run, ratios against the peer where there is one):

- ``encode_speed``: ``DualEncoder.encode`` against ``SentenceTransformer.encode``, the same MiniLM-L6 weights, texts,
  dtype and batch size;
- ``train_speed``: retriever training samples/s (``train``, InfoNCE over in-batch + 1 hard negative, bf16) against
  sentence-transformers' MultipleNegativesRankingLoss on the same model, triplets and batch (its loss module in a
  plain AdamW loop under the same autocast); the median step after warm-up;
- ``rerank_speed``: query-likelihood and yes/no docs/s (``score_pairs``) at batch 64, SmolLM2 and Gemma-3;
- ``blockrank_scaling``: BlockRank against full attention (the same layers, and all layers) and pointwise scoring at
  N = 20, 100, 500 documents of 160 tokens, Mistral-7B (scoring layer 20 of 32, the paper's setting) and SmolLM2,
  median seconds and peak device memory (the rows ``bench/blockrank_scaling.py --plot-only`` draws).

    bash bench/gpu.sh prepare            # here, with pip access: the carried wheels and tokenizers in .gpu/
    bash bench/gpu.sh run OUT/gpu.jsonl  # on the GPU machine (torch installed; .gpu/ beside), OUT a folder whose files
                                         # come back; then commit them as bench/results/gpu.jsonl
    python bench/gpu.py --smoke --out /tmp/gpu.jsonl  # tiny configurations on CPU in seconds (tests/test_gpu_bench.py)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blockrank_scaling import blockrank as blockrank_pass, full_attention, make_prompt, pointwise  # noqa: E402

MINILM, SMOLLM2 = "sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA_LAYERS = (["sliding_attention"] * 5 + ["full_attention"]) * 3
CONFIGS = {  # (transformers class, published configuration)
    "minilm-l6": ("BertModel", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                                    hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)),
    "smollm2-135m": ("LlamaForCausalLM", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                              num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                                              max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                              rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                                              bos_token_id=1, eos_token_id=2, pad_token_id=2)),
    "gemma3-270m": ("Gemma3ForCausalLM", dict(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                                              layer_types=GEMMA_LAYERS, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                                              max_position_embeddings=32768, tie_word_embeddings=True,
                                              rope_parameters={"full_attention": {"rope_theta": 1e6, "rope_type": "default"},
                                                               "sliding_attention": {"rope_theta": 1e4, "rope_type": "default"}},
                                              bos_token_id=2, eos_token_id=1, pad_token_id=0)),
    "mistral-7b": ("MistralForCausalLM", dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                              num_attention_heads=32, num_key_value_heads=8, head_dim=128, sliding_window=None,
                                              max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                              rope_parameters={"rope_theta": 1e6, "rope_type": "default"},
                                              bos_token_id=1, eos_token_id=2)),
}
# --smoke: the same families, a few layers of width 32 (the vocabularies stay, so the real tokenizers fit).
SMOKE = {"minilm-l6": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
         "smollm2-135m": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              intermediate_size=64),
         "gemma3-270m": dict(hidden_size=32, num_hidden_layers=7, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                             intermediate_size=64, sliding_window=6, layer_types=GEMMA_LAYERS[:7], query_pre_attn_scalar=8),
         "mistral-7b": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            intermediate_size=64)}
# The scoring layer of each BlockRank check: Mistral-7B's is the paper's (20 of 32); the others' the default 0.6 x
# layers (a full-attention layer of Gemma-3); in --smoke a full-attention layer past the first.
SCORE_LAYER = {"mistral-7b": 20, "smollm2-135m": 18, "gemma3-270m": 11}
SMOKE_SCORE_LAYER = {"mistral-7b": 2, "smollm2-135m": 2, "gemma3-270m": 5}
# Tolerances of the correctness rows. float32: the paths differ only in summation order. bf16 (8 bits of mantissa):
# BlockRank's per-document mass within 10 % of the mean mass (0.1 / N), hidden states no further from the bf16
# reference than twice the bf16 reference's own distance from the float32 one (at least 1e-2); embeddings compared
# after removing the batch mean (random encoders put every text near one direction: raw cosines of *different* texts
# are ~0.99); losses within 2 % and 0.05 nats of float32.
TOL = {"float32": {"mass": 1e-4, "hidden": 1e-3, "embedding": 1e-4},
       "bfloat16": {"mass_times_n": 0.1, "hidden_floor": 1e-2, "hidden_vs_fp32_gap": 2.0, "centered_cos": 0.95,
                    "loss_rel": 2e-2, "loss_abs": 0.05, "update_cos": 0.9}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Run:
    """The run's settings, device and output (JSON lines, also echoed to stdout)."""

    def __init__(self, args):
        self.smoke = args.smoke
        if args.smoke:  # the smoke run is a CPU run, on any machine
            os.environ.setdefault("DENSEKIT_DEVICE", "cpu")
        self.device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
        self.out = open(args.out, "w")
        self.tokenizers = Path(args.tokenizers) if args.tokenizers else None
        self.tmp = Path(tempfile.mkdtemp(prefix="densekit-gpu-"))
        self.size = (lambda full, smoke: smoke if args.smoke else full)

    def emit(self, row: dict) -> None:
        row = {"bench": "gpu", "device": device_name(self.device), "smoke": self.smoke, **row}
        line = json.dumps(row)
        print(line, flush=True)
        self.out.write(line + "\n")
        self.out.flush()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def tokenizer(self, name: str):
        from transformers import AutoTokenizer

        if self.tokenizers is not None:
            return AutoTokenizer.from_pretrained(self.tokenizers / name.split("/")[-1])
        from densekit.core.models import resolve

        return AutoTokenizer.from_pretrained(resolve(name))

    def model(self, key: str, dtype=torch.float32, device=None, seed: int = 0):
        """A random-weight model of ``CONFIGS[key]`` (``SMOKE``-shrunk in --smoke), built on ``device`` in ``dtype``."""
        import transformers

        cls_name, config = CONFIGS[key]
        cls = getattr(transformers, cls_name)
        config = dict(config, **(SMOKE[key] if self.smoke else {}))
        hf_config = cls.config_class(**config)
        torch.manual_seed(seed)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device or self.device):
                model = cls(hf_config)
        finally:
            torch.set_default_dtype(default)
        return model.eval()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def words(tokenizer, seed: int = 0) -> list[str]:
    """Whole words of the tokenizer's vocabulary (each about one token), a fixed random order."""
    import random

    vocab = [w.lstrip("Ġ") for w in tokenizer.get_vocab() if w.lstrip("Ġ").isalpha() and w.lstrip("Ġ").islower()]
    vocab = sorted(set(w for w in vocab if 3 <= len(w) <= 10))
    random.Random(seed).shuffle(vocab)
    return vocab


def texts(vocab: list[str], n: int, length: int, seed: int) -> list[str]:
    """``n`` texts of ``length`` +- 25% words drawn from ``vocab``."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(vocab, k=rng.randint(int(length * 0.75), int(length * 1.25)))) for _ in range(n)]


def timed(run: Run, fn, reps: int = 3) -> float:
    """Median seconds of ``reps`` calls of ``fn`` (after the caller's warm-up), the device synchronised around each."""
    times = []
    for _ in range(reps):
        run.sync()
        start = time.perf_counter()
        fn()
        run.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_mib(run: Run, fn) -> float | None:
    """Peak device memory (MiB) allocated during ``fn`` above what was allocated before it (None on CPU)."""
    if run.device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


# ------------------------------------------------------------------ correctness

def blockrank_ranker(run: Run, key: str, dtype, doc_batch: int = 32):
    from densekit.reranker.blockrank import BlockRanker
    from densekit.reranker.config import BlockRankConfig

    layer = (SMOKE_SCORE_LAYER if run.smoke else SCORE_LAYER)[key]
    return BlockRanker(run.model(key, dtype), run.tokenizer(SMOLLM2), BlockRankConfig(score_layer=layer, doc_batch=doc_batch),
                       name=f"random-{key}")


def blockrank_prompt(ranker, n: int, doc_tokens: int):
    vocab = min(len(ranker.tokenizer), ranker._base().config.vocab_size)
    return make_prompt(n, doc_tokens, vocab)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# Prompts of the BlockRank reference check: (model, N, doc tokens). Mistral-7B at N = 8 so that its float32 reference
# (29 GB of weights, every layer's eager attention map) fits an 80 GB card; Gemma-3 once more with documents longer
# than its 512-token sliding window, so the window binds at full size too.
REFERENCE_CASES = [("smollm2-135m", 20, 160), ("gemma3-270m", 20, 160), ("gemma3-270m", 3, 600), ("mistral-7b", 8, 160)]
SMOKE_REFERENCE_CASES = [("smollm2-135m", 5, 12), ("gemma3-270m", 5, 12), ("gemma3-270m", 2, 20), ("mistral-7b", 5, 12)]


@torch.inference_mode()
def check_blockrank_reference(run: Run) -> None:
    """Per case: the model in float32, then the same weights cast to bf16; each time the efficient path against the
    reference on one prompt. bf16's hidden-state tolerance is calibrated by the bf16 reference's distance from the
    float32 one (what bf16 itself costs on this model and prompt)."""
    for key, n, doc_tokens in (SMOKE_REFERENCE_CASES if run.smoke else REFERENCE_CASES):
        ranker = blockrank_ranker(run, key, torch.float32, doc_batch=8)
        prompt = blockrank_prompt(ranker, n, doc_tokens)
        fp32_ref = None
        for dtype in ("float32", "bfloat16"):
            ranker.model.to(DTYPES[dtype])
            eff = ranker.forward_blocks(prompt)
            mass, ref = ranker.doc_mass(prompt, eff["capture"]).float(), ranker.reference_forward(prompt)
            ref_mass, ref_hidden = ref["mass"].float(), ref["hidden"].float()
            mass_err, hidden_err = float((mass - ref_mass).abs().max()), rel_err(eff["hidden"], ref_hidden)
            row = {"check": "blockrank_reference", "model": key, "dtype": dtype, "n": n, "doc_tokens": doc_tokens,
                   "prompt_tokens": len(prompt.ids()), "score_layer": ranker.score_layer, "layers": ranker.n_layers,
                   "mass_max_abs_diff": mass_err, "hidden_rel_err": hidden_err,
                   "same_top1": int(mass.argmax()) == int(ref_mass.argmax())}
            if dtype == "float32":
                fp32_ref = (ref_mass.cpu(), ref_hidden.cpu())
                row.update(tol_mass=TOL["float32"]["mass"], tol_hidden=TOL["float32"]["hidden"])
            else:
                tol = TOL["bfloat16"]
                gap = rel_err(ref_hidden.cpu(), fp32_ref[1])
                row.update(bf16_ref_vs_fp32_hidden_rel=gap, bf16_ref_vs_fp32_mass_max_abs=float((ref_mass.cpu() - fp32_ref[0]).abs().max()),
                           tol_mass=tol["mass_times_n"] / n, tol_hidden=max(tol["hidden_floor"], tol["hidden_vs_fp32_gap"] * gap))
            row["pass"] = mass_err <= row["tol_mass"] and hidden_err <= row["tol_hidden"]
            run.emit(row)
            del eff, ref
        del ranker


def encoder_folder(run: Run) -> Path:
    """A sentence-transformers folder of the random MiniLM-L6 (saved once by densekit, read by both libraries)."""
    folder = run.tmp / "minilm"
    if not folder.exists():
        from densekit.retriever.config import EncoderConfig
        from densekit.retriever.encoder import DualEncoder

        DualEncoder(run.model("minilm-l6", device="cpu"), run.tokenizer(MINILM), EncoderConfig()).save(folder)
    return folder


def load_encoder(run: Run, dtype=torch.float32, device=None):
    from densekit.retriever.encoder import DualEncoder

    enc = DualEncoder.from_pretrained(str(encoder_folder(run)))
    return enc.to(device or run.device, dtype=dtype)


def check_encoder_device(run: Run) -> None:
    docs = texts(words(run.tokenizer(MINILM)), run.size(512, 16), 160, seed=1)
    cpu = torch.from_numpy(load_encoder(run, device="cpu").encode(docs, batch_size=64))
    same = torch.from_numpy(load_encoder(run).encode(docs, batch_size=64))
    half = torch.from_numpy(load_encoder(run, torch.bfloat16).encode(docs, batch_size=64))
    diff = float((same - cpu).abs().max())
    mean = cpu.mean(0)
    cos = float(torch.nn.functional.cosine_similarity(half - mean, cpu - mean, dim=1).min())
    own = bool(((half - mean) @ (cpu - mean).T).argmax(1).eq(torch.arange(len(docs))).all())  # each bf16 row finds its text
    from densekit.retriever.encoder import DualEncoder

    loaded_on = next(DualEncoder.from_pretrained(str(encoder_folder(run))).parameters()).device  # no .to(): densekit's choice
    run.emit({"check": "encoder_device", "texts": len(docs), "float32_max_abs_diff": diff, "bf16_min_centered_cosine": cos,
              "bf16_rows_find_their_text": own, "tol_float32": TOL["float32"]["embedding"],
              "tol_bf16_centered_cosine": TOL["bfloat16"]["centered_cos"], "loaded_on": str(loaded_on),
              "pass": diff <= TOL["float32"]["embedding"] and cos >= TOL["bfloat16"]["centered_cos"] and own
              and loaded_on.type == run.device.type})


def triplets(run: Run, n: int, seed: int) -> list[dict]:
    vocab = words(run.tokenizer(MINILM))
    q, pos, neg = (texts(vocab, n, length, seed + i) for i, length in enumerate((12, 120, 120)))
    return [{"query": a, "positives": [b], "negatives": [c]} for a, b, c in zip(q, pos, neg)]


def first_losses(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def check_retriever_bf16_step(run: Run) -> None:
    from densekit.retriever.config import TrainConfig
    from densekit.retriever.train import train

    examples, losses, updates = triplets(run, run.size(64, 8), seed=10), {}, {}
    for dtype in ("float32", "bfloat16"):
        enc = load_encoder(run)
        for module in enc.modules():  # dropout draws different masks for bf16 and float32 inputs on CUDA
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        before = {k: v.detach().clone() for k, v in enc.model.state_dict().items() if v.is_floating_point()}
        config = TrainConfig(batch_size=len(examples), max_steps=1, warmup_ratio=0.0, lr=1e-4, bf16=dtype == "bfloat16", seed=0)
        train(enc, examples, run.tmp / f"retriever-{dtype}", config, show_progress=False)
        losses[dtype] = first_losses(run.tmp / f"retriever-{dtype}")[0]["loss"]
        after = enc.model.state_dict()
        updates[dtype] = torch.cat([(after[k].float() - before[k].float()).flatten() for k in before])
    rel = abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"])
    cos = float(torch.nn.functional.cosine_similarity(updates["bfloat16"], updates["float32"], dim=0))
    tol = TOL["bfloat16"]  # dropout off: the two steps differ by autocast alone
    run.emit({"check": "retriever_bf16_step", "batch": len(examples), "loss_float32": losses["float32"],
              "loss_bf16": losses["bfloat16"], "loss_rel_diff": rel, "update_cosine": cos, "tol_loss_rel": tol["loss_rel"],
              "tol_update_cos": tol["update_cos"], "autocast_on": losses["bfloat16"] != losses["float32"],
              "pass": rel <= tol["loss_rel"] and cos >= tol["update_cos"] and losses["bfloat16"] != losses["float32"]})


def check_reranker_bf16_step(run: Run) -> None:
    from densekit.reranker.blockrank import BlockRanker
    from densekit.reranker.config import BlockRankConfig, RerankTrainConfig
    from densekit.reranker.pointwise import LLMReranker
    from densekit.reranker.train import train_reranker

    vocab = words(run.tokenizer(SMOLLM2))
    examples = [{"query": q, "positives": [p], "negatives": texts(vocab, 3, 60, seed=100 + i)}
                for i, (q, p) in enumerate(zip(texts(vocab, 4, 10, 20), texts(vocab, 4, 60, 21)))]
    makers = {"pointwise": lambda: LLMReranker(run.model("smollm2-135m"), run.tokenizer(SMOLLM2), name="random-smollm2"),
              "blockrank": lambda: BlockRanker(run.model("smollm2-135m"), run.tokenizer(SMOLLM2),
                                               BlockRankConfig(score_layer=(SMOKE_SCORE_LAYER if run.smoke else SCORE_LAYER)["smollm2-135m"]),
                                               name="random-smollm2")}
    for kind, make in makers.items():
        logs = {}
        for dtype in ("float32", "bfloat16"):
            reranker = make()
            config = RerankTrainConfig(group_size=4, batch_size=2, max_steps=2, warmup_ratio=0.0, lr=1e-3,
                                       bf16=dtype == "bfloat16")
            out = run.tmp / f"reranker-{kind}-{dtype}"
            train_reranker(reranker, examples, out, config, show_progress=False)
            logs[dtype] = first_losses(out)
            lora = [v for k, v in reranker.model.state_dict().items() if "lora_B" in k]  # the last run's: bf16
        finite = all(math.isfinite(x["loss"]) for x in logs["bfloat16"])
        first32, first16 = logs["float32"][0]["loss"], logs["bfloat16"][0]["loss"]
        tol = min(TOL["bfloat16"]["loss_abs"], TOL["bfloat16"]["loss_rel"] * abs(first32))
        moved = bool(lora) and any(float(v.abs().sum()) > 0 for v in lora)
        # LoRA's B starts at zero, so the first losses differ by autocast alone: equal means bf16 never reached the step
        run.emit({"check": "reranker_bf16_step", "kind": kind, "lora": True, "steps": len(logs["bfloat16"]),
                  "loss_float32": first32, "loss_bf16": first16, "loss_abs_diff": abs(first16 - first32), "tol_loss_abs": tol,
                  "autocast_on": first16 != first32, "finite": finite, "adapters_moved": moved,
                  "pass": finite and moved and first16 != first32 and abs(first16 - first32) <= tol})


# ------------------------------------------------------------------ speed

def speed_encode(run: Run) -> None:
    from sentence_transformers import SentenceTransformer

    dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    batch = run.size(256, 16)
    docs = texts(words(run.tokenizer(MINILM)), run.size(40000, 64), 160, seed=2)
    ours = load_encoder(run, dtype)
    peer = SentenceTransformer(str(encoder_folder(run)), device=str(run.device)).to(dtype)
    peer.max_seq_length = ours.config.doc_max_length
    fns = {"densekit": lambda: ours.encode(docs, batch_size=batch),
           "sentence_transformers": lambda: peer.encode(docs, batch_size=batch, convert_to_numpy=True)}
    warm = docs[: batch * 2]
    ours.encode(warm, batch_size=batch), peer.encode(warm, batch_size=batch)
    seconds = {}
    for name in ("densekit", "sentence_transformers", "densekit", "sentence_transformers"):  # alternate, keep the best
        t = timed(run, fns[name], reps=1)
        seconds[name] = min(seconds.get(name, t), t)
    agree = float(torch.nn.functional.cosine_similarity(torch.from_numpy(ours.encode(docs[:256], batch_size=batch)),
                                                         torch.from_numpy(peer.encode(docs[:256], batch_size=batch)), dim=1).min())
    run.emit({"check": "encode_speed", "model": "minilm-l6", "dtype": str(dtype).split(".")[-1], "batch": batch,
              "docs": len(docs), "words_per_doc": 160, "max_length": ours.config.doc_max_length,
              "densekit_docs_per_s": round(len(docs) / seconds["densekit"], 1),
              "st_docs_per_s": round(len(docs) / seconds["sentence_transformers"], 1),
              "ratio": round(seconds["sentence_transformers"] / seconds["densekit"], 3), "min_cosine_vs_st": agree})


def st_train_steps(run: Run, examples: list[dict], batch: int, steps: int, max_length: int) -> list[float]:
    """sentence-transformers' MultipleNegativesRankingLoss on (query, positive, negative) triplets: its model and loss
    module, AdamW and linear warm-up, bf16 autocast on CUDA, gradient clipping at 1 (as densekit's engine); seconds a step."""
    from sentence_transformers import SentenceTransformer
    from transformers import get_linear_schedule_with_warmup

    try:  # sentence-transformers >= 6.1 moved the losses
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(encoder_folder(run)), device=str(run.device))
    model.max_seq_length = max_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=20.0)
    prepare = getattr(model, "preprocess", None) or model.tokenize  # sentence-transformers >= 6.1: preprocess
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.device.type == "cuda")
    times = []
    for step in range(steps):
        start = time.perf_counter()
        rows = examples[step * batch:(step + 1) * batch]
        features = [{k: v.to(run.device) if torch.is_tensor(v) else v for k, v in prepare(col).items()}
                    for col in ([e["query"] for e in rows], [e["positives"][0] for e in rows], [e["negatives"][0] for e in rows])]
        with autocast:
            loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        run.sync()
        times.append(time.perf_counter() - start)
    return times


def speed_train(run: Run) -> None:
    from densekit.retriever.config import TrainConfig
    from densekit.retriever.train import train

    batch, steps, warm = run.size(128, 4), run.size(40, 4), run.size(10, 1)
    examples = triplets(run, batch * steps, seed=30)
    bf16 = run.device.type == "cuda"
    config = TrainConfig(batch_size=batch, max_steps=steps, bf16=bf16, n_negatives=1, temperature=0.05,
                         checkpoint_every=10**6, doc_max_length=256, query_max_length=256)
    out = run.tmp / "train-speed"
    train(load_encoder(run), examples, out, config, show_progress=False)
    ours = statistics.median(x["seconds"] for x in first_losses(out)[warm:])
    peer = statistics.median(st_train_steps(run, examples, batch, steps, 256)[warm:])
    run.emit({"check": "train_speed", "model": "minilm-l6", "bf16": bf16, "batch": batch, "hard_negatives": 1,
              "steps_timed": steps - warm, "densekit_samples_per_s": round(batch / ours, 1),
              "st_mnrl_samples_per_s": round(batch / peer, 1), "ratio": round(peer / ours, 3)})


@torch.inference_mode()
def speed_rerank(run: Run) -> None:
    from densekit.reranker.pointwise import LLMReranker
    from densekit.reranker.qlm import QLMReranker

    dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    tok = run.tokenizer(SMOLLM2)
    vocab = words(tok)
    pairs = list(zip(texts(vocab, run.size(1024, 8), 12, 40), texts(vocab, run.size(1024, 8), 160, 41)))
    batch = run.size(64, 4)
    for key in ("smollm2-135m", "gemma3-270m"):
        model = run.model(key, dtype)
        for kind, cls in (("qlm", QLMReranker), ("pointwise", LLMReranker)):
            ranker = cls(model, run.tokenizer(SMOLLM2), name=f"random-{key}")
            ranker.score_pairs(pairs[: batch * 2], batch_size=batch)
            seconds = timed(run, lambda: ranker.score_pairs(pairs, batch_size=batch), reps=1)
            mib = peak_mib(run, lambda: ranker.score_pairs(pairs[:batch], batch_size=batch))
            run.emit({"check": "rerank_speed", "model": key, "kind": kind, "dtype": str(dtype).split(".")[-1],
                      "batch": batch, "pairs": len(pairs), "doc_words": 160, "docs_per_s": round(len(pairs) / seconds, 1),
                      "peak_mib_one_batch": mib})
        del model


@torch.inference_mode()
def speed_blockrank(run: Run) -> None:
    doc_tokens = run.size(160, 8)
    for key in ("mistral-7b", "smollm2-135m"):
        dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
        ranker = blockrank_ranker(run, key, dtype, doc_batch=run.size(128, 4))
        layers = ranker.score_layer + 1
        warm = blockrank_prompt(ranker, 4, 16)
        blockrank_pass(ranker, warm), full_attention(ranker, warm, layers), pointwise(ranker, warm)
        seen = {}
        for n in run.size([20, 100, 500], [2, 4, 8]):
            prompt = blockrank_prompt(ranker, n, doc_tokens)
            row = {"check": "blockrank_scaling", "model": f"{key} (random, {str(dtype).split('.')[-1]})", "n": n,
                   "doc_tokens": doc_tokens, "prompt_tokens": len(prompt.ids()), "layers_run": layers,
                   "layers_total": ranker.n_layers, "doc_batch": ranker.config.doc_batch}
            reps = 3 if n <= run.size(100, 8) else 2  # each timed after one untimed call at this shape (the peak's)
            row["blockrank_mib"] = peak_mib(run, lambda: blockrank_pass(ranker, prompt))
            row["blockrank_s"] = timed(run, lambda: blockrank_pass(ranker, prompt), reps)
            row["full_mib"] = peak_mib(run, lambda: full_attention(ranker, prompt, layers))
            row["full_s"] = timed(run, lambda: full_attention(ranker, prompt, layers), reps)
            full_all = lambda: full_attention(ranker, prompt, ranker.n_layers)  # noqa: E731
            full_all()
            row["full_all_s"] = timed(run, full_all, reps)
            if n <= run.size(100, 4):
                pointwise(ranker, prompt)
                row["pointwise_s"] = timed(run, lambda: pointwise(ranker, prompt), 1)
            row["speedup_vs_full"] = round(row["full_s"] / row["blockrank_s"], 2)
            row["speedup_vs_full_all"] = round(row["full_all_s"] / row["blockrank_s"], 2)
            if "pointwise_s" in row:
                row["speedup_vs_pointwise"] = round(row["pointwise_s"] / row["blockrank_s"], 2)
            seen[n] = row["blockrank_s"]
            run.emit(row)
        ns = sorted(seen)
        run.emit({"check": "blockrank_linearity", "model": key, "n_from": ns[1], "n_to": ns[-1],
                  "time_ratio": round(seen[ns[-1]] / seen[ns[1]], 2), "n_ratio": ns[-1] / ns[1]})
        del ranker


CHECKS = {"blockrank_reference": check_blockrank_reference, "encoder_device": check_encoder_device,
          "retriever_bf16_step": check_retriever_bf16_step, "reranker_bf16_step": check_reranker_bf16_step,
          "encode_speed": speed_encode, "train_speed": speed_train, "rerank_speed": speed_rerank,
          "blockrank_scaling": speed_blockrank}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="bench/results/gpu.jsonl", help="JSON lines written here (and to stdout)")
    p.add_argument("--smoke", action="store_true", help="tiny configurations on CPU: proves the script in seconds")
    p.add_argument("--tokenizers", help="folder of tokenizer folders (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) where the "
                   "packaged models are not installed (bench/gpu.sh prepare writes .gpu/tokenizers)")
    p.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="run these checks only")
    args = p.parse_args(argv)
    run = Run(args)
    from importlib.metadata import version

    run.emit({"check": "environment", "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
              **{name.replace("-", "_"): version(name) for name in ("transformers", "peft", "accelerate", "sentence-transformers")},
              "configs": sorted(CONFIGS)})
    failed = 0
    for name in args.only or CHECKS:
        start = time.perf_counter()
        try:
            CHECKS[name](run)
        except Exception as exc:  # one broken check must not cost the rest of a one-shot device run
            failed += 1
            run.emit({"check": name, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]})
        run.emit({"check": "timing", "of": name, "seconds": round(time.perf_counter() - start, 1)})
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
