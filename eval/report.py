"""Compare systems on one qrels, like ranx's ``compare``: metrics per system, paired significance vs a baseline.

``compare(runs, qrels, metrics, baseline)`` takes plain dicts (``{name: run}``, BEIR qrels) and returns a plain
dict. For every system other than the baseline and every metric, on the per-query values of the evaluated
queries (``evaluate``: identical ids dropped, a query absent from a run counts 0, as ``densekit eval``):

- paired t-test: ``scipy.stats.ttest_rel(system, baseline)`` (statistic and two-sided p-value as scipy gives
  them; when every difference is 0, where scipy answers NaN, p = 1);
- paired randomisation test (sign flip): under H0 each query's difference d_q is as likely -d_q; with R seeded
  random sign vectors s, ``p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (R + 1)`` (two-sided, never 0);
- Holm's step-down correction of each test's p-values across the compared systems (per metric): with the m
  p-values sorted ascending, ``p_(i) -> max_{j <= i} min(1, (m - j + 1) p_(j))``;
- win / tie / loss: the number of queries where the system is above / equal to / below the baseline.

``to_markdown`` renders the result; ``plots.plot_differences`` draws the sorted per-query differences.
``random_order`` gives the chance level of a reranker: the per-query metric of its candidates in random orders.
"""
from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data import DataError

from densekit.core.runs import rank
from densekit.core.types import Qrels, Run

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100")
TIE_TOLERANCE = 1e-12


def ttest(system: Sequence[float], baseline: Sequence[float]) -> tuple[float, float]:
    """``(statistic, p)`` of ``scipy.stats.ttest_rel(system, baseline)``; p = 1 (statistic 0) when every
    paired difference is 0 (scipy: NaN), NaN when there are fewer than 2 queries."""
    from scipy.stats import ttest_rel

    system, baseline = np.asarray(system, dtype=float), np.asarray(baseline, dtype=float)
    if len(system) >= 1 and np.all(system - baseline == 0):
        return 0.0, 1.0
    if len(system) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():  # constant non-zero differences: scipy warns and answers inf, p = 0
        warnings.simplefilter("ignore", RuntimeWarning)
        result = ttest_rel(system, baseline)
    return float(result.statistic), float(result.pvalue)


def randomisation_test(system: Sequence[float], baseline: Sequence[float], permutations: int = 10_000,
                       seed: int = 0, chunk: int = 1000) -> float:
    """Two-sided paired sign-flip randomisation test of mean(system - baseline) = 0 (see the module doc).
    Seeded: the same ``seed`` draws the same sign vectors for every pair of systems."""
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    diff = np.asarray(system, dtype=float) - np.asarray(baseline, dtype=float)
    if len(diff) == 0:
        return math.nan
    observed = abs(diff.mean())
    threshold = observed - 1e-12 * max(1.0, observed)  # a permutation equal to the observed one counts, despite rounding
    rng = np.random.default_rng(seed)
    extreme, left = 0, permutations
    while left:
        n = min(chunk, left)
        signs = rng.integers(0, 2, size=(n, len(diff)), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ diff) / len(diff) >= threshold))
        left -= n
    return (1 + extreme) / (permutations + 1)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaN stays NaN and is not counted."""
    finite = sorted((p, name) for name, p in pvalues.items() if not math.isnan(p))
    m, running, out = len(finite), 0.0, {name: math.nan for name in pvalues}
    for j, (p, name) in enumerate(finite):
        running = max(running, min(1.0, (m - j) * p))
        out[name] = running
    return out


def win_tie_loss(system: Sequence[float], baseline: Sequence[float]) -> dict[str, int]:
    """Queries where ``system`` is above / equal to (within 1e-12) / below ``baseline``."""
    diff = np.asarray(system, dtype=float) - np.asarray(baseline, dtype=float)
    return {"win": int(np.sum(diff > TIE_TOLERANCE)), "tie": int(np.sum(np.abs(diff) <= TIE_TOLERANCE)),
            "loss": int(np.sum(diff < -TIE_TOLERANCE))}


def compare(runs: dict[str, Run], qrels: Qrels, metrics: Iterable[str] = DEFAULT_METRICS, baseline: str | None = None,
            queries: Iterable[str] | None = None, permutations: int = 10_000, seed: int = 0, relevance_level: int = 1,
            ignore_identical_ids: bool = True) -> dict:
    """Metrics per system and paired tests of each system vs ``baseline`` (default: the first run).

    ``queries``: the evaluated query ids (default: every query of ``qrels``); those without qrels are left out.
    Each run is restricted to them and a query it lacks counts 0. Returns::

        {"baseline", "metrics", "queries" (the evaluated ids, sorted), "permutations", "seed",
         "systems": {name: {"means": {metric: value}, "absent_queries": int, "outside_queries": int,
                            "tests": {metric: {"diff", "t", "p_ttest", "p_ttest_holm", "p_random",
                                               "p_random_holm", "win", "tie", "loss"}}  (not for the baseline)}},
         "per_query": {name: {metric: [value per query, in "queries" order]}}}
    """
    from .metrics import evaluate

    metrics = list(dict.fromkeys(metrics))
    if len(runs) < 2:
        raise ValueError(f"compare needs at least two runs, got {len(runs)}")
    names = list(runs)
    baseline = names[0] if baseline is None else baseline
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the systems: {', '.join(names)}")
    qids = sorted(q for q in (qrels if queries is None else queries) if q in qrels)
    if not qids:
        raise DataError("no evaluated query: none of the queries has qrels")
    per_query, systems = {}, {}
    for name, run in runs.items():
        shared = sum(1 for q in qids if q in run)
        if not shared:
            raise DataError(f"run {name!r}: none of its {len(run)} queries is an evaluated query (check --data and --split)")
        values, means = evaluate({q: run.get(q, {}) for q in qids}, qrels, metrics, relevance_level,
                                          ignore_identical_ids)
        per_query[name] = {m: [values[q][m] for q in qids] for m in metrics}
        systems[name] = {"means": means, "absent_queries": len(qids) - shared, "outside_queries": len(run) - shared}
    others = [n for n in names if n != baseline]
    for name in others:
        systems[name]["tests"] = {}
    for m in metrics:
        base = per_query[baseline][m]
        for name in others:
            t, p = ttest(per_query[name][m], base)
            systems[name]["tests"][m] = {"diff": float(np.mean(per_query[name][m]) - np.mean(base)), "t": t, "p_ttest": p,
                                         "p_random": randomisation_test(per_query[name][m], base, permutations, seed),
                                         **win_tie_loss(per_query[name][m], base)}
        for test in ("p_ttest", "p_random"):
            adjusted = holm({name: systems[name]["tests"][m][test] for name in others})
            for name in others:
                systems[name]["tests"][m][test + "_holm"] = adjusted[name]
    return {"baseline": baseline, "metrics": metrics, "queries": qids, "permutations": permutations, "seed": seed,
            "relevance_level": relevance_level, "systems": systems, "per_query": per_query}


def shuffled(doc_ids: Sequence[str], qid: str, seed: int = 0) -> list[str]:
    """``doc_ids`` in a random order fixed by (``seed``, ``qid``) alone: ``random.Random(f"{seed}:{qid}")``."""
    order = list(doc_ids)
    random.Random(f"{seed}:{qid}").shuffle(order)
    return order


def random_order(run: Run, qrels: Qrels, metric: str = "ndcg@10", shuffles: int = 10, relevance_level: int = 1,
                 seed: int = 0, top_k: int | None = None, ignore_identical_ids: bool = True) -> dict[str, float]:
    """The chance level of a reranker: ``{qid: metric of the query's candidates in a random order, averaged over
    shuffles}`` for the queries of ``run`` that have qrels (``evaluate``'s convention).

    Each query's candidates, taken in ranked order (``runs.rank``), are permuted uniformly at random
    ``shuffles`` times; with ``top_k`` only the ``top_k`` best-scored ones are (what a reranker of the top
    ``top_k`` reorders), the rest staying below them in their order. Shuffle ``i`` of query ``q`` is
    ``shuffled(candidates, q, seed + i)``: it depends on neither the other queries nor their order, the result is
    reproducible, and the mean of ``shuffles=1`` calls with seeds ``s, ..., s + n - 1`` is the ``shuffles=n,
    seed=s`` call (the spread over shuffles of a mean over queries comes from such calls). The metric is
    ``evaluate``'s (``relevance_level``; a document whose id is the query's dropped first unless
    ``ignore_identical_ids=False``)."""
    from densekit.eval.metrics import evaluate

    if shuffles < 1:
        raise ValueError(f"shuffles must be >= 1, got {shuffles}")
    ranked = {q: rank(docs) for q, docs in run.items()}
    cut = {q: len(docs) if top_k is None else min(top_k, len(docs)) for q, docs in ranked.items()}
    totals: dict[str, float] = {}
    for i in range(shuffles):
        permuted = {}
        for q, docs in ranked.items():
            order = shuffled(docs[:cut[q]], q, seed + i) + docs[cut[q]:]
            permuted[q] = {d: float(len(order) - j) for j, d in enumerate(order)}
        per_query, _ = evaluate(permuted, qrels, [metric], relevance_level, ignore_identical_ids)
        for q, values in per_query.items():
            totals[q] = totals.get(q, 0.0) + values[metric]
    return {q: total / shuffles for q, total in totals.items()}


def read_runs(specs: Sequence[str]) -> dict[str, Run]:
    """``NAME=FILE`` or ``FILE`` (named by its file name) -> ``{name: run}``; a repeated name raises ValueError."""
    from densekit.eval.runfile import read_run

    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or Path(spec).exists():
            name, path = Path(spec).name, spec
        if name in runs:
            raise ValueError(f"two runs are named {name!r}: name them NAME=FILE")
        runs[name] = read_run(path)
    return runs


def _p(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def to_markdown(result: dict, alpha: float = 0.05, digits: int = 4) -> str:
    """Two Markdown tables: the means (a system marked † / ‡ where its Holm-corrected t-test / randomisation
    p-value vs the baseline is below ``alpha``), then each system's tests per metric."""
    metrics, baseline, systems = result["metrics"], result["baseline"], result["systems"]
    lines = ["| system | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for name, values in systems.items():
        cells = []
        for m in metrics:
            test = values.get("tests", {}).get(m)
            marks = "" if test is None else ("†" if test["p_ttest_holm"] < alpha else "") + ("‡" if test["p_random_holm"] < alpha else "")
            cells.append(f"{values['means'][m]:.{digits}f}{marks}")
        lines.append(f"| {name}{' (baseline)' if name == baseline else ''} | " + " | ".join(cells) + " |")
    others = len(systems) - 1
    lines += ["", f"Paired tests vs {baseline} over {len(result['queries'])} queries (t: scipy ttest_rel; rand: sign-flip "
              f"randomisation, {result['permutations']} permutations, seed {result['seed']}; Holm across {others} "
              f"system{'s' if others != 1 else ''}; † / ‡: Holm p < {alpha}).", "",
              "| system | metric | Δ mean | t | p (t) | p (t, Holm) | p (rand) | p (rand, Holm) | win/tie/loss |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, values in systems.items():
        for m, test in values.get("tests", {}).items():
            t = "n/a" if math.isnan(test["t"]) else f"{test['t']:.3f}"
            lines.append(f"| {name} | {m} | {test['diff']:+.{digits}f} | {t} | {_p(test['p_ttest'])} | "
                         f"{_p(test['p_ttest_holm'])} | {_p(test['p_random'])} | {_p(test['p_random_holm'])} | "
                         f"{test['win']}/{test['tie']}/{test['loss']} |")
    for name, values in systems.items():
        absent, outside = values["absent_queries"], values["outside_queries"]
        if absent or outside:
            lines.append(f"\n{name}: {absent} evaluated quer{'y' if absent == 1 else 'ies'} absent from the run (counted 0), "
                         f"{outside} run quer{'y' if outside == 1 else 'ies'} not evaluated (no qrels in the split, or beyond "
                         "--max-queries).")
    return "\n".join(lines)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_json(result: dict, path: str | Path, overwrite: bool = False) -> None:
    """The result as strict JSON (NaN/inf -> null), written atomically."""
    from .data import atomic_write_text

    atomic_write_text(path, json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n", overwrite)


def format_table(rows: dict[str, dict[str, float]], digits: int = 4) -> str:
    """A Markdown table: one row per system, one column per metric."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(c for values in rows.values() for c in values))
    lines = ["| system | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for system, values in rows.items():
        cells = [f"{values[c]:.{digits}f}" if isinstance(values.get(c), float)
                 else "n/a" if c in values and values[c] is None else str(values.get(c, "")) for c in columns]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
