"""BlockRank scaling: latency and peak memory vs number of documents N, three ways, one run.

For each model and N (documents of ``--doc-tokens`` tokens, random ids; content does not change cost):

- ``full``: the same prompt as one sequence with standard causal attention (SDPA), through the same
  layers BlockRank runs (0 .. scoring layer) -- the strict comparison of attention patterns; and
  ``full_all``: all layers (what a full-attention in-context ranker pays before it can decode);
- ``blockrank``: the efficient path (instruction prefill, doc blocks as one batch, query over the
  concatenated keys/values, stop at the scoring layer) plus the attention-mass scores;
- ``pointwise``: N separate (instruction + doc + query) prompts through all layers, batched by 16.

Peak memory = max RSS sampled every 5 ms during the call minus RSS before it (the script re-runs
itself with a fixed glibc mmap threshold so freed tensors leave RSS and each call starts low). Full attention and
pointwise are skipped above ``--full-max-n`` (their cost at N = 500 exceeds this CPU's budget).
Prints one JSON line per (model, N) with seconds, MiB and ratios, and draws a PNG of latency vs N.

    python bench/blockrank_scaling.py --threads 1 > bench/results/blockrank_scaling.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

from densekit.reranker.blockrank import BlockPrompt, BlockRanker
from densekit.reranker.config import BlockRankConfig

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
LARGER = dict(hidden_size=1024, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
              intermediate_size=2816, max_position_embeddings=8192)


class PeakRSS:
    """Peak resident memory (MiB) above the level at entry, sampled by a thread."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.done = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    def _watch(self):
        while not self.done:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20


def timed(fn):
    with PeakRSS() as mem, torch.inference_mode():
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return round(seconds, 3), round(mem.mib, 1)


def make_prompt(n: int, doc_tokens: int, vocab: int, seed: int = 0) -> BlockPrompt:
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(100, vocab - 1, (k,), generator=g).tolist()  # noqa: E731
    return BlockPrompt(instruction=ids(64), docs=[ids(doc_tokens) for _ in range(n)], query=ids(32))


def full_attention(ranker: BlockRanker, prompt: BlockPrompt, n_layers: int) -> None:
    base = ranker._base()
    inner = base.model
    layers = inner.layers
    base.set_attn_implementation("sdpa")
    inner.layers = layers[:n_layers]
    try:
        inner(input_ids=torch.tensor([prompt.instruction + [t for d in prompt.docs for t in d] + prompt.query],
                                     device=base.device), use_cache=False)
    finally:
        inner.layers = layers
        base.set_attn_implementation("densekit_blockrank")


def pointwise(ranker: BlockRanker, prompt: BlockPrompt, batch: int = 16) -> None:
    base = ranker._base()
    base.set_attn_implementation("sdpa")
    try:
        rows = [prompt.instruction + d + prompt.query for d in prompt.docs]
        for i in range(0, len(rows), batch):
            base(input_ids=torch.tensor(rows[i:i + batch], device=base.device), use_cache=False, logits_to_keep=1)
    finally:
        base.set_attn_implementation("densekit_blockrank")


def blockrank(ranker: BlockRanker, prompt: BlockPrompt) -> None:
    ranker.doc_mass(prompt, ranker.forward_blocks(prompt)["capture"])


def load(which: str) -> BlockRanker:
    if which == "smollm2":
        return BlockRanker.from_pretrained(SMOLLM2, BlockRankConfig())
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from densekit.core.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(SMOLLM2))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **LARGER)).eval()
    return BlockRanker(model, tok, BlockRankConfig(), name="random-llama-1024x8")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        for key, label in (("full_s", "full attention (same layers)"), ("full_all_s", "full attention (all layers)"),
                           ("blockrank_s", "BlockRank efficient path"), ("pointwise_s", "pointwise (N passes)")):
            pts = [(r["n"], r[key]) for r in mine if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents in the prompt (N)")
        ax.set_ylabel("seconds")
        ax.set_title(model)
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # large buffers via mmap: freed memory leaves RSS at once
        os.execve(sys.executable, [sys.executable, *sys.argv], {"DENSEKIT_DEVICE": "cpu", **os.environ,  # a CPU benchmark
                                                                 "MALLOC_MMAP_THRESHOLD_": "131072"})
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=["smollm2", "larger"])
    p.add_argument("--n", nargs="+", type=int, default=[10, 20, 50, 100, 200, 500])
    p.add_argument("--doc-tokens", type=int, default=128)
    p.add_argument("--full-max-n", type=int, default=100)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default="bench/results/blockrank_scaling.png")
    p.add_argument("--plot-only", metavar="JSONL", help="only draw the plot from rows saved earlier (e.g. one file "
                   "assembled from runs of different models, or bench/gpu.py's output)")
    args = p.parse_args()
    if args.plot_only:
        saved = [json.loads(line) for line in Path(args.plot_only).read_text().splitlines() if line.strip()]
        plot([r for r in saved if "blockrank_s" in r], Path(args.out))
        return
    torch.set_num_threads(args.threads)
    rows = []
    for which in args.models:
        ranker = load(which)
        n_layers = ranker.score_layer + 1
        vocab = len(ranker.tokenizer)
        warm = make_prompt(4, 16, vocab)
        blockrank(ranker, warm), full_attention(ranker, warm, n_layers), pointwise(ranker, warm)
        for n in args.n:
            prompt = make_prompt(n, args.doc_tokens, vocab)
            row = {"bench": "blockrank_scaling", "model": ranker.name, "n": n, "doc_tokens": args.doc_tokens,
                   "prompt_tokens": len(prompt.ids()), "layers_run": n_layers, "layers_total": ranker.n_layers,
                   "threads": args.threads}
            row["blockrank_s"], row["blockrank_mib"] = timed(lambda: blockrank(ranker, prompt))
            if n <= args.full_max_n:
                row["full_s"], row["full_mib"] = timed(lambda: full_attention(ranker, prompt, n_layers))
                row["full_all_s"], row["full_all_mib"] = timed(lambda: full_attention(ranker, prompt, ranker.n_layers))
                row["pointwise_s"], row["pointwise_mib"] = timed(lambda: pointwise(ranker, prompt))
                row["speedup_vs_full"] = round(row["full_s"] / row["blockrank_s"], 2)
                row["speedup_vs_full_all"] = round(row["full_all_s"] / row["blockrank_s"], 2)
                row["speedup_vs_pointwise"] = round(row["pointwise_s"] / row["blockrank_s"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
        base = {r["n"]: r["blockrank_s"] for r in rows if r["model"] == ranker.name}
        if 100 in base and 500 in base:
            print(json.dumps({"bench": "blockrank_scaling", "model": ranker.name,
                              "blockrank_time_500_over_100": round(base[500] / base[100], 2)}), flush=True)
    plot(rows, Path(args.out))


if __name__ == "__main__":
    main()
