"""One reranking bench, one table: first stage vs rerankers vs fusion, with paired significance.

Tasks (first stage -> candidates; each test task has a tuning task whose qrels choose the fusion weight):

| task | queries | first stage | tuned on |
| --- | --- | --- | --- |
| scifact-test-dense | scifact test, all 300 | densekit all-MiniLM-L6-v2 Flat, top 20 | scifact-train-dense |
| scifact-train-dense | scifact train, first 40 judged (sorted ids) | same | (tuning only) |
| scifact-test-bm25 / scifact-train-bm25 | as above | BM25 (bm25s), top 20 | |
| dl19-bm25 | TREC DL19, 43 judged queries | the shipped BM25 top 100 | dl20-bm25 |
| dl20-bm25 | TREC DL20, first 20 judged queries (sorted ids) | the shipped BM25 top 100 | (tuning only) |

``score`` computes a reranker's scores of a task's candidates and appends them, a few queries at a
time, to ``<out>/scores/<task>/<reranker>.jsonl``: an interrupted run resumes where it stopped.
``report`` reads every cached score file and prints one JSON line per row (and a Markdown table):
nDCG@10, the difference to the first stage with two-sided paired tests over queries
(``densekit.eval.report.ttest`` = ``scipy.stats.ttest_rel``, and a 10,000-flip randomisation test), the number of
queries, scoring docs/s and, for fused rows, the weight chosen on the tuning task. A reranker trained by
``bench/rerank_train.py`` (a saved folder) also gets its training groups seen, training minutes and the
paired test against its own zero-shot row; two trained rows of one scorer and base model (e.g. SFT vs CL)
are compared with the same tests; ``--plot`` draws nDCG@10 against training groups seen. Random order = each query's candidates shuffled (mean over 10 seeds per query).

    python bench/rerank.py score --task scifact-test-dense --reranker qlm:HuggingFaceTB/SmolLM2-135M-Instruct
    python bench/rerank.py score --task scifact-test-dense --reranker runs/rr/pw-sft/model --lower-cache runs/lower
    python bench/rerank.py report --save bench/results/rerank.jsonl --plot bench/results/rerank-groups.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from densekit.eval.data import load_dataset, resolve_dataset, select_queries
from densekit.eval.fusion import fuse, tune_weight
from densekit.eval.metrics import evaluate
from densekit.eval.runfile import read_run, write_run
from densekit.eval.report import random_order
from densekit.core.checkpoints import read_train_log
from densekit.core.runs import top_k

METRIC = "ndcg@10"


@dataclass(frozen=True)
class Task:
    dataset: str
    split: str
    first_stage: str            # dense | bm25 | a run file inside the dataset folder
    k: int
    max_queries: int | None = None
    tune_on: str | None = None


TASKS = {
    "scifact-test-dense": Task("scifact", "test", "dense", 20, tune_on="scifact-train-dense"),
    "scifact-train-dense": Task("scifact", "train", "dense", 20, max_queries=40),
    "scifact-test-bm25": Task("scifact", "test", "bm25", 20, tune_on="scifact-train-bm25"),
    "scifact-train-bm25": Task("scifact", "train", "bm25", 20, max_queries=40),
    "dl19-bm25": Task("msmarco-trecdl-rerank", "dl19", "runs/bm25.dl19.top100.trec", 100, tune_on="dl20-bm25"),
    "dl20-bm25": Task("msmarco-trecdl-rerank", "dl20", "runs/bm25.dl20.top100.trec", 100, max_queries=20),
}


def slug(spec: str) -> str:
    return spec.replace("/", "--").replace(":", "__")


def load_task(name: str, out: Path):
    """``(dataset, judged queries, first-stage run cut to k)``; dense runs are cached as TREC files."""
    task = TASKS[name]
    folder = resolve_dataset(task.dataset)
    ds = load_dataset(folder, task.split)
    judged = {q: t for q, t in ds.queries.items() if q in ds.qrels}
    queries = select_queries(judged, task.max_queries)
    if task.first_stage == "bm25":
        from densekit.retriever.bm25 import bm25_search

        run = bm25_search(ds.corpus, queries, task.k)
    elif task.first_stage == "dense":
        cached = out / "first" / f"{name}.trec"
        if not cached.exists():
            from densekit.retriever.search import dense_search

            run = dense_search(ds.corpus, queries, task.k, index_dir=str(out / f"index-{task.dataset}-minilm"))
            write_run(cached, run, tag="dense-minilm", overwrite=True)
        run = read_run(cached)
    else:
        run = read_run(folder / task.first_stage)
    run = top_k({q: run.get(q, {}) for q in queries}, task.k)
    return ds, queries, run


def score(args) -> None:
    from densekit.reranker.base import load_reranker

    out = Path(args.out)
    ds, queries, run = load_task(args.task, out)
    path = out / "scores" / args.task / f"{slug(args.reranker)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["qid"] for line in path.read_text().splitlines()} if path.exists() else set()
    todo = [q for q in queries if q not in done]
    print(f"{args.task}: {len(done)} queries scored, {len(todo)} to go", flush=True)
    if not todo:
        return
    reranker = load_reranker(args.reranker)
    if args.lower_cache:
        from densekit.reranker.layer_cache import LowerLayerCache

        reranker.lower_cache = LowerLayerCache(reranker.model, args.cache_layers, store=args.lower_cache)
    for start in range(0, len(todo), args.chunk):
        part = todo[start:start + args.chunk]
        t0 = time.perf_counter()
        scored = reranker.rerank({q: run[q] for q in part}, ds.corpus, queries, top_k=TASKS[args.task].k,
                                 batch_size=args.batch_size, show_progress=False)
        seconds = (time.perf_counter() - t0) / len(part)
        with open(path, "a") as fh:
            for q in part:
                fh.write(json.dumps({"qid": q, "scores": scored[q], "seconds": seconds, "docs": len(run[q])}) + "\n")
        print(f"{args.task} {args.reranker}: {len(done) + start + len(part)}/{len(queries)} queries "
              f"({len(part) * TASKS[args.task].k / (seconds * len(part)):.2f} docs/s)", flush=True)


def read_scores(path: Path) -> tuple[dict, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["qid"]: r["scores"] for r in rows}, sum(r["docs"] for r in rows) / sum(r["seconds"] for r in rows)


def training_info(spec: str) -> dict | None:
    """For a reranker trained by densekit (a folder with ``reranker.json`` inside a training run folder): its kind,
    base model, zero-shot spec, objective, training groups seen (last logged step x groups per step) and minutes."""
    folder = Path(spec.partition(":")[2] if ":" in spec and not Path(spec).is_dir() else spec)
    saved = folder / "reranker.json"
    if not saved.exists():
        return None
    meta = json.loads(saved.read_text())
    run = read_train_log(folder.parent)
    config = run["config"]
    objective = "aux-only" if config.get("aux_only") else config["objective"]
    tuning = [(row["step"] * config["batch_size"], row[f"eval_{METRIC}"]) for row in run["log"] if f"eval_{METRIC}" in row]
    return {"kind": meta["kind"], "base_model": meta["base_model"], "zero_shot": f"{meta['kind']}:{meta['base_model']}",
            "objective": objective, "train_layers": config.get("train_layers"),
            "groups_seen": run["steps"] * config["batch_size"], "train_minutes": round(run["seconds"] / 60, 1),
            "tuning_curve": tuning}


def report(args) -> None:
    from densekit.eval.plots import plot_learning_curves
    from densekit.eval.report import randomisation_test, ttest

    out = Path(args.out)
    rows, comparisons = [], []
    for name, task in TASKS.items():
        folder = out / "scores" / name
        if task.tune_on is None or not folder.is_dir():
            continue
        ds, queries, run = load_task(name, out)
        base = {q: v[METRIC] for q, v in evaluate(run, ds.qrels, [METRIC])[0].items()}
        qids = sorted(base)
        per_system: dict[str, dict] = {}

        def paired(values: dict, reference: dict) -> dict:
            a, b = [values.get(q, 0.0) for q in qids], [reference.get(q, 0.0) for q in qids]
            return {"delta": round(statistics.fmean(a) - statistics.fmean(b), 4), "p_ttest": float(f"{ttest(a, b)[1]:.3g}"),
                    "p_randomisation": float(f"{randomisation_test(a, b, 10_000, seed=0):.3g}")}

        def row(system: str, per_query: dict, **extra) -> None:
            per_system[system] = per_query
            rows.append({"task": name, "system": system, "queries": len(qids),
                         METRIC: round(statistics.fmean(per_query.get(q, 0.0) for q in qids), 4),
                         **paired(per_query, base), **extra})

        row(f"first stage ({task.first_stage}, top {task.k})", base)
        row("random order (10 shuffles)", random_order(run, ds.qrels))
        tuning = None
        specs = sorted(folder.glob("*.jsonl"), key=lambda p: (training_info(unslug(p.stem)) is not None, p.stem))
        for path in specs:  # zero-shot rows first: trained rows are tested against them
            spec = unslug(path.stem)
            trained = training_info(spec)
            scores, docs_per_s = read_scores(path)
            if set(scores) != set(queries):
                print(f"skip {name} {spec}: {len(scores)}/{len(queries)} queries scored", flush=True)
                continue
            label = spec if trained is None else (f"{trained['zero_shot']} {trained['objective']}-trained "
                                                  f"({trained['groups_seen']} groups, top-{trained['train_layers']} LoRA)")
            extra = {"docs_per_s": round(docs_per_s, 2)}
            per_query = per_query_ndcg(run, scores, ds.qrels, queries)
            if trained is not None:
                extra.update(groups_seen=trained["groups_seen"], train_minutes=trained["train_minutes"], spec=spec)
                if trained["tuning_curve"]:  # logged while training (--eval-every): the tuning task's nDCG@10
                    extra["tuning_curve_training"] = trained["tuning_curve"]
                if trained["zero_shot"] in per_system:
                    extra["vs_zero_shot"] = paired(per_query, per_system[trained["zero_shot"]])
            row(label, per_query, **extra)
            tune_path = out / "scores" / task.tune_on / path.name
            if not tune_path.exists():
                continue
            if tuning is None:
                tuning = load_task(task.tune_on, out)
            t_ds, t_queries, t_run = tuning
            t_scores, _ = read_scores(tune_path)
            if set(t_scores) != set(t_queries):
                print(f"skip fusion {name} {spec}: tuning task {len(t_scores)}/{len(t_queries)} scored", flush=True)
                continue
            w, curve = tune_weight(t_run, t_scores, t_ds.qrels, TASKS[task.tune_on].k)
            fused = fuse(run, scores, w, task.k)
            row(f"{label} fused (z-score, w={w} tuned on {task.tune_on})",
                {q: v[METRIC] for q, v in evaluate(fused, ds.qrels, [METRIC])[0].items()}, fuse_weight=w,
                tuning_curve={str(k): round(v, 4) for k, v in curve.items()})
        trained_rows = [r for r in rows if r["task"] == name and "groups_seen" in r and "fused" not in r["system"]]
        for i, a in enumerate(trained_rows):  # same scorer and base model, different objective: which training wins
            for b in trained_rows[i + 1:]:
                if a["system"].split(" ")[0] == b["system"].split(" ")[0]:
                    comparisons.append({"task": name, "a": a["system"], "b": b["system"],
                                        **paired(per_system[a["system"]], per_system[b["system"]])})
        if trained_rows and args.plot:
            curves: dict[str, list] = {}
            for r in trained_rows:
                zero = r["system"].split(" ")[0]
                start = next((x[METRIC] for x in rows if x["task"] == name and x["system"] == zero), None)
                curves.setdefault(r["system"].split(" (")[0], [] if start is None else [(0, start)]).append(
                    (r["groups_seen"], r[METRIC]))
            print(plot_learning_curves(curves, Path(args.plot).with_name(f"{Path(args.plot).stem}-{name}.png"), METRIC,
                                       {"first stage": rows[[r["task"] for r in rows].index(name)][METRIC]}, overwrite=True))
            logged = {r["system"].split(" (")[0]: r["tuning_curve_training"] for r in trained_rows if "tuning_curve_training" in r}
            for system in logged:  # the zero-shot model's score on the tuning task: the curve's point 0
                zero = system.split(" ")[0]
                zero_path = out / "scores" / task.tune_on / f"{slug(zero)}.jsonl"
                if zero_path.exists():
                    t_ds, t_queries, t_run = tuning or load_task(task.tune_on, out)
                    zero_scores = read_scores(zero_path)[0]
                    logged[system] = [(0, statistics.fmean(per_query_ndcg(t_run, zero_scores, t_ds.qrels, t_queries).values()))] + logged[system]
            if logged:
                t_first = load_task(task.tune_on, out)
                first_tuning = statistics.fmean(v[METRIC] for v in evaluate(t_first[2], t_first[0].qrels, [METRIC])[0].values())
                print(plot_learning_curves(logged, Path(args.plot).with_name(f"{Path(args.plot).stem}-{name}-tuning.png"),
                                           f"{METRIC} on {task.tune_on} (logged while training)",
                                           {"first stage": first_tuning}, overwrite=True))
    for r in rows:
        print(json.dumps(r))
    for c in comparisons:
        print(json.dumps({"comparison": True, **c}))
    if args.save:
        Path(args.save).write_text("".join(json.dumps(r) + "\n" for r in rows)
                                   + "".join(json.dumps({"comparison": True, **c}) + "\n" for c in comparisons))
    print("\n| task | system | queries | nDCG@10 | delta vs first stage | p (paired t) | p (randomisation) | "
          "vs zero-shot (p, paired t) | groups seen | train min | docs/s |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        z = r.get("vs_zero_shot")
        vs_zero = "" if z is None else f"{z['delta']:+.4f} ({z['p_ttest']})"
        print(f"| {r['task']} | {r['system']} | {r['queries']} | {r[METRIC]:.4f} | {r['delta']:+.4f} | "
              f"{r['p_ttest']} | {r['p_randomisation']} | {vs_zero} | "
              f"{r.get('groups_seen', '')} | {r.get('train_minutes', '')} | {r.get('docs_per_s', '')} |")
    for c in comparisons:
        print(f"\n{c['task']}: {c['a']} - {c['b']} = {c['delta']:+.4f} (paired t p={c['p_ttest']}, "
              f"randomisation p={c['p_randomisation']})")


def unslug(stem: str) -> str:
    return stem.replace("__", ":").replace("--", "/")


def per_query_ndcg(run: dict, scores: dict, qrels: dict, queries: dict) -> dict[str, float]:
    """Per-query nDCG@10 of ``run`` with each query's candidates re-scored by ``scores``."""
    reranked = {q: {**run[q], **scores[q]} for q in queries}
    return {q: v[METRIC] for q, v in evaluate(reranked, qrels, [METRIC])[0].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/bench-rerank", help="first-stage runs, indexes and score caches")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score")
    s.add_argument("--task", required=True, choices=sorted(TASKS))
    s.add_argument("--reranker", required=True, help="a reranker spec, e.g. qlm:HuggingFaceTB/SmolLM2-135M-Instruct")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--chunk", type=int, default=4, help="queries scored between two appends to the cache")
    s.add_argument("--lower-cache", help="a lower-layer store (densekit.reranker.layer_cache): the input of the top "
                   "--cache-layers layers of every prompt is read from / written to it, so models sharing their lower "
                   "layers (a base model and its top-L LoRA adaptations) run those layers once per prompt")
    s.add_argument("--cache-layers", type=int, default=4, help="with --lower-cache: the top layers that always run")
    r = sub.add_parser("report")
    r.add_argument("--save", help="write the JSON lines here too")
    r.add_argument("--plot", help="PNG of nDCG@10 against training groups seen (one file per task, <stem>-<task>.png)")
    args = p.parse_args()
    (score if args.command == "score" else report)(args)


if __name__ == "__main__":
    main()
