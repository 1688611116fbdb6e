"""Write the generated result sections of README.md, docs/results/*.md and bench/README.md from bench/results.

    python bench/readme_results.py            # rewrite every page's generated sections in place
    python bench/readme_results.py --check    # exit 1 when a page differs from what the results say

A section lies between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; each NAME is rendered below
(``SECTIONS``) from its results file, and ``PAGES`` says which page must hold which sections (a page may hold
the same section as another, e.g. ``beir`` in README.md and docs/results/index.md). No figure in a generated
section is typed by hand; tests/test_docs.py checks that the results pages hold no figure outside them.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

MARKER = re.compile(r"<!-- generated: ([A-Za-z0-9_-]+) -->\n")


# Seconds a query under which a reranker's cells cannot have scored its prompts themselves (the slowest cell of every
# reranker that scored in the benchmark took >= 1.4 s a query here).
PREFILLED_S_PER_QUERY = 0.5


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def _p(value: float) -> str:
    """A p-value as the pages print it: 2 significant digits."""
    return f"{value:.2g}"


def _table(head: list[str], rows: list[list], align: str = "---") -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + f" {align} |" * len(head)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- the BEIR table (densekit benchmark)

def _gain_lose(table: dict) -> tuple[list[str], list[str], list[str]]:
    """The reranking systems that gain / lose over their own first stage on the held-out datasets pooled, each name
    starred where both paired tests give p < 0.05, and those equal to it on every pooled query (a fusion weight of 0:
    the reranker dropped)."""
    gain, lose, equal = [], [], []
    for name in table["systems"]:
        versus = table["rows"][name].get("heldout_vs_first_stage")
        if versus:
            pooled = versus["pooled"]
            if pooled["diff"] == 0 and pooled.get("win") == 0 and pooled.get("loss") == 0:
                equal.append(name)
                continue
            star = "\\*" if max(pooled["p_ttest"], pooled["p_random"]) < 0.05 else ""
            (gain if pooled["diff"] > 0 else lose).append(name + star)
    return gain, lose, equal


def _gain_lose_sentence(gain: list[str], lose: list[str], equal: list[str] = ()) -> str:
    same = (f"; {', '.join(equal)} equal{'s' if len(equal) == 1 else ''} it on every held-out query (fusion weight 0 "
            "chosen on the tuning data: the reranker dropped)") if equal else ""
    return (f"- **Over their own first stage on the held-out mean, {', '.join(gain) or 'no reranking system'} "
            f"gain{'s' if len(gain) == 1 else ''} and {', '.join(lose) or 'none'} lose{'s' if len(lose) == 1 else ''}**"
            f"{same} (\\*: p < 0.05 in both the paired t-test and the randomisation test over the pooled held-out queries).")


def beir_summary() -> str:
    """The README's view of the BEIR table: the table, the best held-out system, who gains over its first stage."""
    from densekit.eval.benchmark import to_markdown

    table = json.loads((RESULTS / "beir" / "table.json").read_text())
    base = table["baseline"]
    pooled = {n: table["rows"][n]["heldout_pooled"] for n in table["systems"] if table["rows"][n].get("heldout_pooled")}
    best = max(pooled, key=lambda n: pooled[n]["diff"])
    b = pooled[best]
    lines = [to_markdown(table).rstrip(), "",
             f"- best on the held-out datasets pooled: {best}, {b['diff']:+.4f} over {base} ({b['queries']} queries, "
             f"paired t p = {b['p_ttest']:.2g}, randomisation p = {b['p_random']:.2g})",
             _gain_lose_sentence(*_gain_lose(table)),
             "- every system's pooled tests, its weights and what the run costs: [Results](docs/results/index.md)"]
    return "\n".join(lines) + "\n"


def beir() -> str:
    from densekit.eval.benchmark import to_markdown

    table = json.loads((RESULTS / "beir" / "table.json").read_text())
    lines = [to_markdown(table).rstrip(), ""]
    base = table["baseline"]
    for name in table["systems"]:
        pooled = table["rows"][name].get("heldout_pooled")
        if not pooled:
            continue
        verdict = "gains over" if pooled["diff"] > 0 else "equals" if pooled["diff"] == 0 and not pooled["win"] + pooled["loss"] else "loses to"
        lines.append(f"- {name} {verdict} {base} on the held-out datasets pooled: {pooled['diff']:+.4f} over "
                     f"{pooled['queries']} queries (paired t p = {pooled['p_ttest']:.2g}, randomisation p = "
                     f"{pooled['p_random']:.2g}; {pooled['win']} wins, {pooled['loss']} losses)")
    gain, lose, equal = _gain_lose(table)
    for name in table["systems"]:
        versus = table["rows"][name].get("heldout_vs_first_stage")
        if not versus:
            continue
        first, pooled = table["rows"][name]["first_stage"], versus["pooled"]
        worst = min(versus["by_dataset"], key=versus["by_dataset"].get)
        lines.append(f"- {name} against its own first stage ({first}), held-out datasets pooled: {pooled['diff']:+.4f} over "
                     f"{pooled['queries']} queries (paired t p = {pooled['p_ttest']:.2g}, randomisation p = "
                     f"{pooled['p_random']:.2g}); per held-out dataset "
                     + ", ".join(f"{d} {v:+.4f}" for d, v in versus["by_dataset"].items())
                     + f" (worst: {worst})")
    if gain or lose or equal:
        lines.append(_gain_lose_sentence(gain, lose, equal))
    for name in table["systems"]:
        used = []
        for d in table["datasets"]:
            for kind, setting in table["cells"][f"{name}|{d['name']}"].get("settings", {}).items():
                where = f"tuned on its {setting['tuned_on']} split" if setting["tuned_on"] else "pooled over the tune datasets"
                used.append(f"{d['name']} {setting['weight']} ({where})")
        if used:
            lines.append(f"- {name}'s weights: " + "; ".join(used))
    invocations = [json.loads(line) for path in sorted((RESULTS / "beir").glob("invocations.*.jsonl"))
                   for line in path.read_text().splitlines()]
    index_seconds = {}
    for row in invocations:  # each index is built once; a later invocation that found it built reports nothing
        index_seconds.update(row.get("index_seconds", {}))
    cells = [json.loads(path.read_text()) for path in (RESULTS / "beir" / "cells").glob("*/*/cell.json")
             if f"{path.parent.name}|{path.parent.parent.name}" in table["cells"]]
    cell_seconds = sum(c["result"]["metrics"]["seconds"] for c in cells)
    # A reranker none of whose cells (in any system) ran as slowly as real scoring does here read every prompt score
    # from the committed cache, filled beforehand by `densekit eval --score-cache`: its cells' time leaves it out.
    per_query: dict[str, list[float]] = {}
    for c in cells:
        if c["system"].get("reranker"):
            m = c["result"]["metrics"]
            per_query.setdefault(c["system"]["reranker"], []).append(m["seconds"] / max(m["num_queries"], 1))
    prefilled = {spec for spec, times in per_query.items() if max(times) < PREFILLED_S_PER_QUERY}
    read_back = sorted({c["system"]["name"] for c in cells if c["system"].get("reranker") in prefilled},
                       key=table["systems"].index)
    lines.append(f"- a full run from empty folders costs about {(sum(index_seconds.values()) + cell_seconds) / 3600:.1f} h "
                 f"of this 2-core machine: {sum(index_seconds.values()) / 60:.0f} min encoding {len(index_seconds)} corpora "
                 f"once per model (`invocations.*.jsonl`) and {cell_seconds / 60:.0f} min in the cells (each cell's "
                 "`cell.json`; the reranker cells dominate), summed over the invocations that built them, some of them "
                 "beside other jobs; a rerun of finished cells reads them back"
                 + (f"; plus the scoring of {', '.join(read_back)}, whose every cell ran at under {PREFILLED_S_PER_QUERY} s a "
                    "query: their prompt scores were computed beforehand by `densekit eval --score-cache` into the "
                    "committed `bench/results/beir/scores`, and the cells read them back"
                    if read_back else ""))
    overhead = [json.loads(line) for line in (RESULTS / "benchmark_overhead.jsonl").read_text().splitlines()][-1]
    lines.append(f"- the benchmark's own cost (`python bench/benchmark_overhead.py`, {overhead['cells']} BM25 and dense "
                 f"cells, indexes built): {overhead['ratio_benchmark_over_one_by_one']:.2f}x the time of the same cells "
                 f"run one by one through `densekit eval` + `densekit compare` (median of {len(overhead['seconds']['benchmark'])}, "
                 "same run; one process instead of one per cell), and no corpus encoded")
    return "\n".join(lines) + "\n"


def _compare(name: str) -> str:
    """A ``densekit compare --json`` result file as its own Markdown (table and paired tests)."""
    from densekit.eval.report import to_markdown

    return to_markdown(json.loads((RESULTS / name).read_text())).rstrip() + "\n"


def hybrid_scifact() -> str:
    return _compare("hybrid-scifact.json")


def qlm_fused_scifact() -> str:
    return _compare("qlm-fused-scifact.json")


def distill() -> str:
    """The distilled encoder against InfoNCE and zero-shot on scifact test, and the step time of distillation."""
    r = _jsonl("distill_speed.jsonl")[-1]
    ratios = r["ratio_over_infonce"]
    return (_compare("distill-scifact.json") + "\n"
            f"- training step time with teacher scores (`python bench/distill_speed.py`, all-MiniLM-L6-v2, batch "
            f"{r['batch_size']}, {r['n_negatives']} negative, {r['rounds']} interleaved rounds of {r['steps_per_run']} "
            f"steps through the engine): Margin-MSE **{ratios['margin-mse']:.3f}x** and listwise KL "
            f"**{ratios['kl']:.3f}x** InfoNCE's median step ({r['median_seconds_per_step']['infonce']:.2f} s)\n"
            + _mined() + _teacher_stats())


def _mined() -> str:
    m = json.loads((RESULTS / "distill" / "mine.json").read_text())
    return (f"- mined (`densekit mine ... --teacher ... --denoise`): {m['queries']} scifact train queries, {m['negatives']} "
            f"negatives kept, {m['denoised']} dropped as ranked above the positive by the teacher\n")


def _teacher_stats(path: str = "distill/teacher_stats.json") -> str:
    t = json.loads((RESULTS / path).read_text())
    matched = (f" (tau_matched: the median student gap over the median teacher margin, {t['tau_matched']}, the "
               "temperature it was trained at)" if "tau_matched" in t else "")
    return (f"- the teacher on its {t['pairs']} training pairs (`python bench/teacher_stats.py`): the positive above the "
            f"negative in {t['pair_accuracy']:.1%} of pairs, above every negative of its query in "
            f"{t['positive_above_every_negative']:.1%} of {t['groups']} groups; margin mean {t['margin_mean']:.2f}, "
            f"median size {t['margin_median_abs']:.2f}: at tau = {t['tau']} Margin-MSE asks a normalised student for "
            f"cosine gaps of about {t['cosine_gap_asked']:.3f}; the zero-shot student ({t['student']}) orders "
            f"{t['student_pair_accuracy']:.1%} of these pairs right, with cosine gaps of "
            f"{t['student_cosine_gap_median_abs']:.3f}{matched}\n")


def history_distill_v1() -> str:
    """The first distillation recipe (superseded): scifact test, its teacher's pairs, the held-out pool."""
    pools = [json.loads(line) for line in (RESULTS / "distill" / "v1" / "heldout_pool.jsonl").read_text().splitlines()]
    lines = [_compare("distill/v1/distill-scifact.json"), _teacher_stats("distill/v1/teacher_stats.json").rstrip()]
    for r in pools:
        n = r["ndcg@10"]
        lines.append(f"- {r['dataset']}, against {r['against']}: nDCG@10 {n['diff']:+.4f} over {n['queries']} queries "
                     f"(t-test p = {_p(n['p_ttest'])}, {n['win']}/{n['tie']}/{n['loss']} win/tie/loss)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- first stage, encoder, index, training

def first_stage() -> str:
    """scifact test, all queries: BM25 and dense from the hybrid comparison, AUC and the peer check from encode /
    train_scifact."""
    cmp = json.loads((RESULTS / "hybrid-scifact.json").read_text())
    metrics = cmp["metrics"]
    rows = [[name, len(cmp["queries"])] + [f"{values['means'][m]:.4f}" for m in metrics]
            for name, values in cmp["systems"].items()]
    zero = next(r for r in _jsonl("train_scifact.jsonl") if r.get("model") == "zero-shot")
    lines = [_table(["system (scifact test)", "queries"] + metrics, rows), "",
             f"- dense all-MiniLM-L6-v2 AUC@100 (global ROC-AUC over every query's top 100): {zero['auc@100']:.4f}"]
    return "\n".join(lines) + "\n"


def encode() -> str:
    rows = []
    for r in _jsonl("encode.jsonl"):
        rows.append([r["dataset"], r["docs"], r["threads"], r["densekit_docs_per_s"], r["st_docs_per_s"],
                     f"**{r['ratio_densekit_over_st']:.3f}**", f"{r['ndcg@10_densekit']:.4f} / {r['ndcg@10_st_faiss']:.4f}",
                     f"{r['recall@100_densekit']:.4f} / {r['recall@100_st_faiss']:.4f}", f"{r['min_cosine']:.7f}",
                     r.get("note", "")])
    return _table(["dataset", "docs", "threads", "densekit docs/s", "sentence-transformers docs/s", "ratio",
                   "nDCG@10 densekit / ST + FAISS", "Recall@100 densekit / ST + FAISS", "min cosine", "note"], rows) + "\n"


def _qps(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def search() -> str:
    rows = []
    for r in _jsonl("search.jsonl"):
        knob = f" (nprobe {r['nprobe']})" if "nprobe" in r else f" (efSearch {r['ef_search']})" if "ef_search" in r else ""
        rows.append([f"{r['vectors']}, {r['n']:,} x {r['dim']}, {r['queries']} queries", r["factory"] + knob,
                     f"{r['build_s']} s", r["recall@10_vs_exact"], f"{_qps(r['qps_densekit'])} / {_qps(r['qps_raw_faiss'])}",
                     f"{r['overhead_pct_median_pair']:+.1f} %"])
    return _table(["vectors", "factory (knob)", "build", "recall@10 vs exact", "QPS densekit / raw FAISS",
                   "overhead (median pair)"], rows) + "\n"


def merge_memory() -> str:
    rows = [[r["merge"], r["factory"], f"{r['docs']:,} x {r['dim']}", r["shards"], f"{r['vectors_gb']} GB",
             f"{r['peak_rss_gb']} GB", f"**{r['ratio']:.2f}x**", f"{r['merge_s']} s"] for r in _jsonl("merge_memory.jsonl")]
    return _table(["merge", "factory", "vectors", "shards", "vectors size", "peak RSS", "peak / vectors", "time"],
                  rows) + "\n"


def train_scifact() -> str:
    rows, speed = [], []
    for r in _jsonl("train_scifact.jsonl"):
        if r["bench"] == "train_scifact":
            name = {"zero-shot": "zero-shot all-MiniLM-L6-v2", "infonce": "+ InfoNCE", "mw": "+ MW (AUC) loss"}.get(r["model"], r["model"])
            rows.append([name, f"{r['ndcg@10']:.4f}", f"{r['recall@100']:.4f}", f"{r['auc@100']:.4f}",
                         f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "—",
                         r.get("steps", ""), r.get("examples", "")])
        else:
            speed.append(r)
    lines = [_table(["model", "nDCG@10", "Recall@100", "AUC@100", "train time", "steps", "examples"], rows), ""]
    runs = [r for r in _jsonl("train_scifact.jsonl") if r["bench"] == "train_scifact"]
    names = {"zero-shot": "the base model", "infonce": "InfoNCE", "mw": "MW"}
    for metric, label in (("ndcg@10", "nDCG@10"), ("recall@100", "Recall@100"), ("auc@100", "AUC@100")):
        best = max(runs, key=lambda r: r[metric])
        lines.append(f"- best {label}: {names.get(best['model'], best['model'])} ({best[metric]:.4f})")
    for r in speed:
        lines.append(f"- training throughput, batch {r['batch_size']}, {r['steps']} alternating steps: densekit "
                     f"{r['densekit_samples_per_s']} vs sentence-transformers MultipleNegativesRankingLoss "
                     f"{r['st_mnrl_samples_per_s']} samples/s, ratio **{r['ratio_densekit_over_st']:.3f}**"
                     + (f" ({r['note']})" if r.get("note") else ""))
    return "\n".join(lines) + "\n"


def cli_startup() -> str:
    r = _jsonl("cli_help.jsonl")[-1]
    return (f"- `densekit --help`: {r['help_s']} s, {r['help_ratio']}x a bare `python -c \"import argparse\"` "
            f"({r['peer_s']} s) in the same run\n"
            f"- `densekit train retriever --help`: {r['train_retriever_help_s']} s, {r['train_retriever_help_ratio']}x\n"
            f"- median of {r['repeats']} fresh processes, Python {r['python']}, {r['cpu_count']} cores\n")


# ---------------------------------------------------------------- reranking

KIND_LABEL = {"qlm": "query likelihood", "pointwise": "yes/no prompt", "blockrank": "BlockRank attention",
              "cross": "cross-encoder"}
SYSTEM = re.compile(r"^(?P<kind>[a-z]+):(?P<model>\S+)(?: (?P<trained>[a-z-]+-trained) \((?P<how>[^)]*)\))?"
                    r"(?: fused \((?P<norm>[^,]+), w=(?P<w>[0-9.]+) tuned on (?P<tuned>[^)]+)\))?$")


def _label(system: str) -> str:
    m = SYSTEM.match(system)
    if m is None:
        return system
    model = m["model"].split("/")[-1].replace("-Instruct", "")
    label = f"{KIND_LABEL.get(m['kind'], m['kind'])}, {model}, " + (f"{m['trained']} ({m['how']})" if m["trained"] else "zero-shot")
    if m["w"]:
        label += f", fused (w = {float(m['w']):g}, tuned on {m['tuned']})"
    return label


def rerank() -> str:
    rows = [r for r in _jsonl("rerank.jsonl") if not r.get("comparison")]
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        random = next((r["ndcg@10"] for r in mine if r["system"].startswith("random order")), None)
        table = []
        for r in mine:
            vs = r.get("vs_zero_shot")
            pointwise_trained = r["system"].startswith("pointwise:") and "-trained" in r["system"] and "fused" not in r["system"]
            docs = f"{r['docs_per_s']}{'*' if pointwise_trained else ''}" if "docs_per_s" in r else ""
            first = r["delta"] == 0.0 and r["system"].startswith("first stage")
            table.append([_label(r["system"]), f"{r['ndcg@10']:.4f}",
                          "—" if first else f"{r['delta']:+.4f}", "—" if first else _p(r["p_ttest"]),
                          "—" if first else _p(r["p_randomisation"]),
                          f"{r['ndcg@10'] / random:.1f}x" if random else "",
                          f"{vs['delta']:+.4f} ({_p(vs['p_ttest'])})" if vs else "",
                          f"{r['groups_seen']:,}" if "groups_seen" in r else "",
                          f"{r['train_minutes']:.0f}" if "train_minutes" in r else "", docs])
        counts = sorted({r["queries"] for r in mine})
        lines += [f"**{task}** ({' / '.join(map(str, counts))} queries)", "",
                  _table(["system", "nDCG@10", "Δ first stage", "p (t)", "p (rand.)", "x random order",
                          "Δ vs its zero-shot (p)", "groups seen", "train min", "docs/s"], table), ""]
    lines.append("\\* scored from the stored lower-layer states (`--lower-cache`): only the trained top layers ran, "
                 "so these docs/s are not comparable with the other rows.")
    return "\n".join(lines) + "\n"


def rerank_pairs() -> str:
    lines = []
    for r in _jsonl("rerank.jsonl"):
        if r.get("comparison"):
            lines.append(f"- {r['task']}: {_label(r['a'])} minus {_label(r['b'])}: {r['delta']:+.4f} (paired t p = "
                         f"{_p(r['p_ttest'])}, randomisation p = {_p(r['p_randomisation'])})")
    return "\n".join(lines) + "\n"


def rerank_train_speed() -> str:
    rows = []
    for r in _jsonl("rerank_train_speed.jsonl"):
        full = r["pairs_per_s full-depth LoRA"]
        for key, value in r.items():
            if key.startswith("pairs_per_s "):
                rows.append([f"{r['scorer']} {r['objective']}, {r['steps']} steps of {r['pairs_per_step']} pairs",
                             key[len("pairs_per_s "):], value, f"**{value / full:.2f}x**", _loop(r)])
    return _table(["run", "side", "pairs/s", "vs full depth", "measured through"], rows) + "\n"


def _loop(row: dict) -> str:
    """What a training-speed row timed: the engine (``through``), or, for rows from before the benches ran through
    it, a hand-written step loop that production does not run (rerun the bench's command to re-measure)."""
    return row.get("through", "a hand-written step loop (before the engine; not re-measured)")


# ---------------------------------------------------------------- BlockRank

def blockrank_scaling() -> str:
    rows, ratios = [], []
    for r in _jsonl("blockrank_scaling.jsonl"):
        if "blockrank_time_500_over_100" in r:
            ratios.append(f"- {r['model']}: BlockRank time at N = 500 / N = 100: **{r['blockrank_time_500_over_100']}**")
            continue
        full = "full_s" in r
        rows.append([f"{r['model']} ({r['layers_run']} of {r['layers_total']} layers)", r["n"], r["prompt_tokens"],
                     f"{r['blockrank_s']} s, {r['blockrank_mib']} MiB",
                     f"{r['full_s']} s, {r['full_mib']} MiB" if full else "—",
                     f"{r['full_all_s']} s" if full else "—", f"{r['pointwise_s']} s" if full else "—",
                     f"{r['speedup_vs_full']}x / {r['speedup_vs_full_all']}x / {r['speedup_vs_pointwise']}x" if full else ""])
    return _table(["model", "N", "prompt tokens", "BlockRank", "full, same layers", "full, all layers",
                   "pointwise (N passes)", "speed-up vs full same / all / pointwise"], rows) + "\n\n" + "\n".join(ratios) + "\n"


SIGNAL = {"all query": "every query-block token", "last 2": "last 2 query-block tokens"}


def blockrank_probe() -> str:
    """Per model, its latest probe: the pooled one over several tuning splits where it ran, else the scifact-only one."""
    rows = _jsonl("blockrank_probe.jsonl")
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows if r.get("summary")):
        pooled = [i for i, r in enumerate(rows) if r.get("model") == model and r.get("pooled")]
        lines += _pooled_probe(rows, pooled[-1]) if pooled else _single_probe(rows, model)
    return "\n".join(lines)


def _choice(key: tuple) -> str:
    return f"{SIGNAL.get(key[0], key[0])}, {key[1]} mass, {key[2]} heads"


def _pooled_probe(rows: list[dict], at: int) -> list[str]:
    """The pooled probe summarised at ``rows[at]``: per scoring choice its best layer on the pooled mean, with each
    tuning split's figure in that cell; then each split's own best."""
    from densekit.eval.probe import pooled_rows

    summary = rows[at]
    model, tune = summary["model"], summary["tune"]
    before = [i for i, r in enumerate(rows[:at]) if r.get("model") == model and r.get("pooled")]
    block = rows[(before[-1] + 1 if before else 0):at]
    by = {split: [r for r in block if r.get("model") == model and r.get("split") == split and not r.get("summary")]
          for split in tune}
    cells = pooled_rows(by)
    best = summary["best"]
    table = []
    for key in dict.fromkeys((c["signal"], c["doc_mass"], c["heads"]) for c in cells):
        top = max((c for c in cells if (c["signal"], c["doc_mass"], c["heads"]) == key), key=lambda c: c["ndcg@10"])
        chosen = (top["layer"], *key) == (best["layer"], best["signal"], best["doc_mass"], best["heads"])
        mark = (lambda v: f"**{v}**") if chosen else (lambda v: v)
        table.append([_choice(key) + (" (the chosen default)" if chosen else ""), mark(top["layer"]),
                      mark(f"{top['ndcg@10']:.3f}")] + [f"{top['by_dataset'][split]:.3f}" for split in tune])
    own = "; ".join(f"{split} layer {b['layer']}, {_choice((b['signal'], b['doc_mass'], b['heads']))}: {b['ndcg@10']:.3f}"
                    for split, b in summary["best_by_dataset"].items())
    layers = max(c["layer"] for c in cells) + 1
    queries = ", ".join(f"{split} {n}" for split, n in summary["queries"].items())
    return [f"**{model}** ({layers} layers; pooled over {queries} queries, their {summary['first_stage']} top "
            f"{summary['depth']} in random order; random order {summary['random_order']:.3f}; default set: "
            f"`{json.dumps(summary['setting'])}`)", "",
            _table(["choice", "best layer (pooled)", "nDCG@10 pooled"] + [f"{split}" for split in tune], table), "",
            f"Each tuning split's own best: {own}.", ""]


def _single_probe(rows: list[dict], model: str) -> list[str]:
    """A probe of one tuning split (before the pooled probe): its rows carry no split name."""
    summary = [r for r in rows if r.get("model") == model and r.get("summary")][-1]
    cells = [r for r in rows if r.get("model") == model and not r.get("summary") and "split" not in r]
    table = []
    paper = summary["paper_choice"]
    table.append([f"paper: {SIGNAL.get(paper['signal'], paper['signal'])}, {paper['doc_mass']} mass, {paper['heads']} heads "
                  f"(its layer, 60 % depth)", paper["layer"], f"{paper['ndcg@10']:.3f}"])
    for key in dict.fromkeys((c["signal"], c["doc_mass"], c["heads"]) for c in cells):
        best = max((c for c in cells if (c["signal"], c["doc_mass"], c["heads"]) == key), key=lambda c: c["ndcg@10"])
        chosen = (best["layer"], *key) == (summary["best"]["layer"], summary["best"]["signal"],
                                           summary["best"]["doc_mass"], summary["best"]["heads"])
        value = f"**{best['ndcg@10']:.3f}**" if chosen else f"{best['ndcg@10']:.3f}"
        table.append([_choice(key) + (" (the chosen default)" if chosen else ""),
                      f"**{best['layer']}**" if chosen else best["layer"], value])
    layers = max(c["layer"] for c in cells) + 1
    best = summary["best"]
    curve = {c["layer"]: c["ndcg@10"] for c in cells
             if (c["signal"], c["doc_mass"], c["heads"]) == (best["signal"], best["doc_mass"], best["heads"])}
    return [f"**{model}** ({layers} layers; {summary['queries']} queries of {summary['split']}, their dense top "
            f"{summary['depth']}; random order {summary['random_order']:.3f}; default set: `{json.dumps(summary['setting'])}`)",
            "", _table(["choice", "best layer", "nDCG@10"], table), "",
            f"nDCG@10 of the chosen signal ({SIGNAL.get(best['signal'], best['signal'])}, {best['doc_mass']} mass, "
            f"{best['heads']} heads) at each layer: " + " · ".join(f"{layer}: {curve[layer]:.2f}" for layer in sorted(curve)), ""]


def blockrank_train_curve() -> str:
    curve = _jsonl("blockrank_train_curve.jsonl")
    fused = next(r for r in _jsonl("rerank.jsonl")
                 if r.get("system", "").startswith("blockrank:HuggingFaceTB/SmolLM2-135M-Instruct fused"))
    tuning = fused["tuning_curve"]
    head = ["groups seen", "0 (zero-shot)"] + [str(r["groups_seen"]) for r in curve]
    row = ["nDCG@10, tuning queries", f"{tuning['1.0']:.4f}"] + [f"{r['eval_ndcg@10']:.4f}" for r in curve]
    return (_table(head, [row]) + "\n\n"
            f"- the dense first stage on the same queries: {tuning['0.0']:.4f} (the zero-shot and first-stage values are "
            "the ends, w = 1 and w = 0, of the zero-shot fusion's tuning curve in `rerank.jsonl`)\n")


def blockrank_train_speed() -> str:
    lines = []
    for r in _jsonl("blockrank_train_speed.jsonl"):
        full, aux = [v for k, v in r.items() if k.startswith("s_per_step ")]  # LM + aux through all layers, then aux-only
        lines.append(f"- {r['model']}, one {r['group_size']}-document group a step, {r['doc_max_tokens']}-token documents, "
                     f"scoring layer {r['score_layer']}, {r['steps']} steps: LM + aux loss through all layers "
                     f"{full} s a step, `--aux-only` (layers up to the scoring layer) {aux} s, **{r['speed-up']}x** "
                     f"(measured through {_loop(r)}" + (f"; {r['conditions']}" if r.get("conditions") else "") + ")")
    return "\n".join(lines) + "\n"


def _changed(new: float, old: float) -> str:
    return "unchanged within 10 %" if abs(new / old - 1) <= 0.1 else f"{'up' if new > old else 'down'} {abs(new / old - 1):.0%}"


def training_speed() -> str:
    """The training-throughput ratios re-measured through the engine, against the hand-written loop's figures."""
    rerank = _jsonl("rerank_train_speed.jsonl")
    old_r = [r for r in rerank if "through" not in r][-1]
    new_r = [r for r in rerank if "through" in r][-1]
    block = _jsonl("blockrank_train_speed.jsonl")
    old_b = [r for r in block if "through" not in r][-1]
    new_b = [r for r in block if "through" in r][-1]
    d = _jsonl("distill_speed.jsonl")[-1]["ratio_over_infonce"]
    layer = (f" (the scoring layer moved from {old_b['score_layer']} to {new_b['score_layer']} with the pooled probe, and "
             "aux-only runs only the layers up to it)" if new_b["score_layer"] != old_b["score_layer"] else "")
    return (f"**Training throughput, re-measured through the engine `densekit train` runs** "
            f"([Results](docs/results/reranking.md#training-throughput-top-l-layers-against-full-depth-lora)): "
            f"top-4-layer LoRA over full depth **{new_r['ratio']:.2f}x** (the removed hand-written loop measured "
            f"{old_r['ratio']:.2f}x: {_changed(new_r['ratio'], old_r['ratio'])}), with the lower-layer cache "
            f"**{new_r['ratio cached']:.2f}x** (was {old_r['ratio cached']:.2f}x: "
            f"{_changed(new_r['ratio cached'], old_r['ratio cached'])}); BlockRank `--aux-only` over LM + aux "
            f"**{new_b['speed-up']:.2f}x** (was {old_b['speed-up']:.2f}x: {_changed(new_b['speed-up'], old_b['speed-up'])}"
            f"{layer}); a distillation step costs {d['margin-mse']:.3f}x (Margin-MSE) and {d['kl']:.3f}x (listwise KL) "
            "an InfoNCE step.\n")


# ---------------------------------------------------------------- superseded runs (bench/README.md)

def history_rerank_scifact() -> str:
    rows = []
    runs = _jsonl("rerank_scifact.jsonl")
    for r in runs[:1] + _jsonl("rerank_scifact_baselines.jsonl")[1:] + runs[1:]:
        spread = f" ({r['ndcg@10_min']:.2f}–{r['ndcg@10_max']:.2f})" if "ndcg@10_min" in r else ""
        rows.append([r["system"], r["queries"], f"{r['ndcg@10']:.4f}{spread}", r.get("recall@20", "—"),
                     f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "—", r.get("docs_per_s", "—")])
    return _table(["system", "queries", "nDCG@10", "Recall@20", "train time", "docs/s"], rows) + "\n"


def history_blockrank_scifact() -> str:
    rows = [[r["system"], r["queries"], f"{r['ndcg@10']:.4f}", r["recall@20"],
             f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "—", r.get("score_layer", "—"),
             r.get("queries_per_s", "—")] for r in _jsonl("blockrank_scifact.jsonl")]
    return _table(["system", "queries", "nDCG@10", "Recall@20", "train time", "scoring layer", "queries/s"], rows) + "\n"


def _paired_rows() -> tuple[list[dict], list[dict]]:
    rows = _jsonl("paired.jsonl")
    return [r for r in rows if r["bench"] == "paired_system"], [r for r in rows if r["bench"] == "paired"]


def paired() -> str:
    """``python bench/paired_table.py > bench/results/paired.jsonl``: each pair of rows of the BEIR table head to head,
    per dataset and pooled over the held-out datasets."""
    systems, pairs = _paired_rows()
    auc = {(r["system"], r["dataset"]): r["global_auc@100"] for r in systems if "global_auc@100" in r}
    out = []
    for a, b in dict.fromkeys((r["system"], r["against"]) for r in pairs):
        rows = []
        for r in (r for r in pairs if (r["system"], r["against"]) == (a, b)):
            n = r["ndcg@10"]
            row = [r["dataset"], n["queries"], f"{n['diff']:+.4f}", _p(n["p_ttest"]), _p(n["p_random"]),
                   f"{n['win']}/{n['tie']}/{n['loss']}"]
            if "auc@100" in r:
                u = r["auc@100"]
                glob = (f"{auc[(a, r['dataset'])] - auc[(b, r['dataset'])]:+.4f}" if (a, r["dataset"]) in auc else "—")
                row += [glob, f"{u['diff']:+.4f}", _p(u["p_ttest"])]
            rows.append(row)
        head = ["dataset", "queries", "nDCG@10 diff", "p (t)", "p (rand.)", "win/tie/loss"]
        if len(rows[0]) > len(head):
            head += ["global AUC@100 diff", "per-query AUC diff", "p (t)"]
        out.append(f"**{a} against {b}**\n\n" + _table(head, rows))
    return "\n".join(out)


MW_PAIRS = (("mw-scifact", "infonce-scifact", "scifact train"),
            ("mw-mix", "infonce-mix", "the even scifact + nfcorpus train mixture"))


def mw_claim() -> str:
    """One sentence per training set on the MW paper's held-out AUC claim, from ``paired.jsonl``'s MW-against-InfoNCE
    rows (encoders trained on scifact, and on the scifact + nfcorpus mixture once its rows are in)."""
    systems, pairs = _paired_rows()
    auc = {(r["system"], r["dataset"]): r["global_auc@100"] for r in systems if "global_auc@100" in r}
    out = []
    for mw, infonce, trained_on in MW_PAIRS:
        pool = next((r for r in pairs if (r["system"], r["against"]) == (mw, infonce)
                     and r["dataset"].startswith("heldout pool") and "dl19" not in r["dataset"]), None)
        if pool is None:
            continue
        heldout = [r["dataset"] for r in systems if r["system"] == mw and r["role"] == "heldout" and r["dataset"] != "dl19"]
        higher = [d for d in heldout if auc[(mw, d)] > auc[(infonce, d)]]
        u, n = pool["auc@100"], pool["ndcg@10"]
        verdict = ("reproduces" if u["diff"] >= 0.03 and u["p_ttest"] < 0.05 else
                   "reproduces in direction, not in size" if u["diff"] > 0 and u["p_ttest"] < 0.05 else
                   "does not reproduce here")
        out.append(f"**MW against InfoNCE (both all-MiniLM-L6-v2 fine-tuned on {trained_on}, the same examples and "
                   f"steps), on the held-out BEIR datasets:** global AUC@100 higher with MW on {len(higher)} of "
                   f"{len(heldout)} ({', '.join(higher) or 'none'}); pooled per-query AUC@100 {u['diff']:+.4f} (t-test "
                   f"p = {_p(u['p_ttest'])}, {u['queries']} queries), nDCG@10 {n['diff']:+.4f} (p = {_p(n['p_ttest'])}). "
                   f"The MW paper's claim (held-out AUC +0.03-0.04 over InfoNCE) {verdict}.\n")
    return "\n".join(out)


SECTIONS = {
    "beir": beir,
    "beir-summary": beir_summary,
    "hybrid-scifact": hybrid_scifact,
    "qlm-fused-scifact": qlm_fused_scifact,
    "distill": distill,
    "first-stage": first_stage,
    "encode": encode,
    "search": search,
    "merge-memory": merge_memory,
    "train-scifact": train_scifact,
    "cli-startup": cli_startup,
    "rerank": rerank,
    "rerank-pairs": rerank_pairs,
    "rerank-train-speed": rerank_train_speed,
    "blockrank-scaling": blockrank_scaling,
    "blockrank-probe": blockrank_probe,
    "blockrank-train-curve": blockrank_train_curve,
    "blockrank-train-speed": blockrank_train_speed,
    "history-rerank-scifact": history_rerank_scifact,
    "history-blockrank-scifact": history_blockrank_scifact,
    "history-distill-v1": history_distill_v1,
    "paired": paired,
    "mw-claim": mw_claim,
    "training-speed": training_speed,
}

# Every page and the sections it must hold (a page may hold no others).
PAGES = {
    "README.md": ("beir-summary", "mw-claim", "training-speed"),
    "docs/results/index.md": ("beir", "mw-claim", "paired", "hybrid-scifact"),
    "docs/results/retrieval.md": ("first-stage", "encode", "search", "merge-memory", "train-scifact", "distill",
                                  "cli-startup"),
    "docs/results/reranking.md": ("qlm-fused-scifact", "rerank", "rerank-pairs", "rerank-train-speed"),
    "docs/results/blockrank.md": ("blockrank-scaling", "blockrank-probe", "blockrank-train-curve", "blockrank-train-speed"),
    "bench/README.md": ("history-rerank-scifact", "history-blockrank-scifact", "history-distill-v1"),
}


def render(text: str, page: str = "README.md", cache: dict | None = None) -> str:
    """``text`` (the page ``page``) with every generated section rewritten from the results files."""
    cache = {} if cache is None else cache
    found = MARKER.findall(text)
    unknown = sorted(set(found) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"{page}: unknown generated section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    missing = [name for name in PAGES.get(page, ()) if name not in found]
    if missing:
        raise SystemExit(f"{page} has no section {missing[0]!r} (<!-- generated: {missing[0]} --> ... "
                         f"<!-- end: {missing[0]} -->)")
    for name in dict.fromkeys(found):
        pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page}: section {name!r} has no end marker (<!-- end: {name} -->)")
        if name not in cache:
            cache[name] = SECTIONS[name]()
        text = pattern.sub(lambda m: m.group(1) + cache[name] + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that every page is up to date")
    args = parser.parse_args()
    cache: dict[str, str] = {}
    stale = []
    for page in PAGES:
        path = ROOT / page
        if not path.exists():
            raise SystemExit(f"{page}: missing (it must hold the sections {', '.join(PAGES[page])})")
        text = path.read_text()
        new = render(text, page, cache)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"{', '.join(stale)} out of date: run python bench/readme_results.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
