"""``densekit benchmark``: every system on every dataset, one BEIR table (systems x datasets, means, paired tests).

A suite (TOML, ``load_suite``) names datasets and systems::

    name = "beir-cpu"            # the output folder belongs to this suite (another suite's folder is refused)
    baseline = "bm25"            # every cell is tested against this system on the same queries
    metric = "ndcg@10"

    [[dataset]]
    name = "scifact"             # a name under $DENSEKIT_DATA (an official BEIR name is downloaded there when
                                 # missing, online), or give `data = "<folder>"`
    split = "test"
    role = "tune"                # tune | heldout
    max_queries = 100            # optional: the first N evaluated queries (sorted ids)
    relevance_level = 1
    runs = { bm25 = "<TREC file>" }        # optional: a saved run used wherever a system's first stage is bm25
    tune_runs = { bm25 = "<TREC file>" }   # optional: the same for its tuning split (`fuse = "auto"`)
                                 # (run paths relative to the dataset folder, unless absolute)

    [[system]]
    name = "hybrid"
    first_stage = "hybrid:sentence-transformers/all-MiniLM-L6-v2"   # bm25 | dense:<model> | hybrid:<model>
    hybrid_weight = "auto"       # hybrid only: W or auto (and hybrid_norm = z | minmax | rrf)
    reranker = "qlm:HuggingFaceTB/SmolLM2-135M-Instruct"            # optional, with depth (20) and fuse (W | auto)

Each (dataset, system) cell is one ``jobs.evaluate`` call (the code `densekit eval` runs) whose run is kept in
``<out>/cells/<dataset>/<system>/run.trec.gz`` with ``cell.json`` (its key, the evaluate result and where every
setting came from). A cell whose key (dataset and system definitions) is unchanged is not run again, so a killed
benchmark resumes; a changed system re-runs its own cells only. Reranker scores are kept per prompt in
``<out>/scores`` (``reranker.score_cache``): systems sharing a reranker (alone, fused) score each prompt once, and
an interrupted reranker cell resumes. Dense indexes live in ``<out>/indexes`` (or
``--indexes DIR``), one per (dataset, model), so a corpus is encoded once per model whatever the number of systems.

Held-out discipline: a setting a system chooses from data (``hybrid_weight`` / ``fuse`` = ``"auto"``) is chosen
on each ``tune`` dataset's own tuning split; on a ``heldout`` dataset it is the weight with the best mean of those
tuning curves (each tune dataset weighted equally), so a held-out dataset's qrels are read for its metrics only.

The table (``report.compare`` per dataset, the statistics of `densekit compare`): each system's mean ``metric``
per dataset, the macro mean over all datasets and over the held-out ones, each cell's paired t-test and
randomisation test against the baseline (Holm-corrected over all cells) and its win/tie/loss; written as
``table.md``, ``table.tex``, ``table.json`` and ``heatmap.png`` (differences to the baseline).

Under ``torchrun`` / ``accelerate launch`` the cells are dealt out over the processes (cell ``i`` to rank
``i % world``); held-out cells that need pooled settings wait for the tune cells, and rank 0 writes the table.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from densekit.core.io import (DataError, atomic_write_text, check_target, check_writable, folder_lock,
                                  read_manifest)

ROLES = ("tune", "heldout")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
FORMAT = 1


@dataclass
class DatasetSpec:
    """One column of the table: a split of a BEIR folder and its role."""

    name: str
    data: str = ""
    split: str = "test"
    role: str = "heldout"
    max_queries: int | None = None
    relevance_level: int = 1
    runs: dict = field(default_factory=dict)
    tune_runs: dict = field(default_factory=dict)


@dataclass
class SystemSpec:
    """One row of the table: a first stage, optionally reranked and fused."""

    name: str
    first_stage: str = "bm25"
    hybrid_weight: float | str | None = None
    hybrid_norm: str | None = None
    reranker: str | None = None
    depth: int | None = None
    fuse: float | str | None = None
    top_k: int = 100


@dataclass
class Suite:
    name: str
    datasets: list[DatasetSpec]
    systems: list[SystemSpec]
    baseline: str
    metric: str = "ndcg@10"


def _spec(cls, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "name" not in raw:
        raise DataError(f"{where}: missing 'name'")
    return cls(**raw)


def load_suite(path: str | Path) -> Suite:
    """Read a suite TOML file (module docstring) and check it (``check_suite``)."""
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise DataError(f"{path}: not a readable TOML suite ({err})") from None
    extra = sorted(set(raw) - {"name", "baseline", "metric", "dataset", "system"})
    if extra:
        raise DataError(f"{path}: unknown key(s) {', '.join(extra)}")
    datasets = [_spec(DatasetSpec, d, f"{path} [[dataset]] {i + 1}") for i, d in enumerate(raw.get("dataset", []))]
    systems = [_spec(SystemSpec, s, f"{path} [[system]] {i + 1}") for i, s in enumerate(raw.get("system", []))]
    suite = Suite(raw.get("name") or path.stem, datasets, systems, raw.get("baseline") or (systems[0].name if systems else ""),
                  raw.get("metric", "ndcg@10"))
    check_definitions(suite)  # before any download
    fetch_missing(suite)
    check_suite(suite)
    return suite


def fetch_missing(suite: Suite) -> None:
    """Download (online; md5-checked, ``data.download``) into ``$DENSEKIT_DATA`` every dataset given by an official
    BEIR name that is not there yet; offline, the error says so. Datasets given by folder are never fetched. Under
    torchrun only rank 0 downloads; the other processes wait for the folder."""
    from .data import BEIR_MD5, data_root, download, resolve_dataset
    from .jobs import launcher_shards

    _, rank = launcher_shards() or (1, 0)
    for d in suite.datasets:
        if d.data or d.name not in BEIR_MD5:
            continue
        while True:
            try:
                resolve_dataset(d.name)
                break
            except DataError:
                if rank == 0:
                    download(d.name, data_root())
                else:
                    time.sleep(1.0)


def parse_first_stage(text: str) -> tuple[str, str | None]:
    """``bm25`` -> (bm25, None); ``dense:<model>`` / ``hybrid:<model>`` -> (kind, model); else ValueError."""
    kind, _, model = text.partition(":")
    if kind == "bm25" and not model:
        return kind, None
    if kind in ("dense", "hybrid") and model:
        return kind, model
    raise DataError(f"first stage {text!r}: use bm25, dense:<model> or hybrid:<model>")


def check_definitions(suite: Suite) -> None:
    """The checks that need no data: names, roles, the baseline, first stages, and every system's settings (a
    weight that fits its first stage, ``fuse`` only with a reranker, ``rrf`` without a weight, saved runs only for
    ``bm25``)."""
    from densekit.eval.metrics import parse_metric

    if not suite.datasets or len(suite.systems) < 2:
        raise DataError(f"suite {suite.name!r} needs at least one [[dataset]] and two [[system]]s (a baseline and "
                        "what is compared with it)")
    parse_metric(suite.metric)
    for what, items in (("dataset", suite.datasets), ("system", suite.systems)):
        names = [item.name for item in items]
        for name in names:
            if not isinstance(name, str) or not NAME.match(name):
                raise DataError(f"{what} name {name!r}: use letters, digits and . _ + - (it names a folder)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataError(f"two {what}s are named {', '.join(map(repr, twice))}: give each its own name")
    if suite.baseline not in [s.name for s in suite.systems]:
        raise DataError(f"baseline {suite.baseline!r} is not one of the systems")
    for d in suite.datasets:
        if d.role not in ROLES:
            raise DataError(f"dataset {d.name!r}: role {d.role!r}; use tune or heldout")
        other = sorted((set(d.runs) | set(d.tune_runs)) - {"bm25"})
        if other:
            raise DataError(f"dataset {d.name!r}: saved runs stand for the bm25 first stage only, not {', '.join(other)}")
    for s in suite.systems:
        kind, _ = parse_first_stage(s.first_stage)
        where = f"system {s.name!r}"
        if kind != "hybrid" and (s.hybrid_weight is not None or s.hybrid_norm is not None):
            raise DataError(f"{where}: hybrid_weight / hybrid_norm serve a hybrid:<model> first stage, not {s.first_stage}")
        if s.hybrid_norm not in (None, "z", "minmax", "rrf"):
            raise DataError(f"{where}: hybrid_norm {s.hybrid_norm!r}; use z, minmax or rrf")
        if s.hybrid_norm == "rrf" and s.hybrid_weight is not None:
            raise DataError(f"{where}: hybrid_norm rrf (reciprocal-rank fusion) has no weight: drop hybrid_weight")
        for name, value in (("hybrid_weight", s.hybrid_weight), ("fuse", s.fuse)):
            if value is not None and value != "auto" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                                          or not 0 <= value <= 1):
                raise DataError(f"{where}: {name} {value!r}; use a weight in [0, 1] or \"auto\"")
        if not s.reranker and (s.fuse is not None or s.depth is not None):
            raise DataError(f"{where}: fuse and depth serve a reranker: add reranker = \"<spec>\" or drop them")
        if s.reranker and s.fuse == "auto" and kind == "bm25":
            missing = [d.name for d in suite.datasets if "bm25" in d.runs and "bm25" not in d.tune_runs]
            if missing:
                raise DataError(f"{where}: fuse = \"auto\" over the saved bm25 run of {', '.join(missing)} needs "
                                "that dataset's tune_runs.bm25 (the first-stage run of its tuning split)")


def check_suite(suite: Suite) -> None:
    """Refuse, before any model loads, what the suite cannot mean (``check_definitions``), an unknown dataset, split
    or reranker kind, a missing saved run, a tune dataset without a tuning split when a system chooses a weight
    (``auto``), a held-out split as a tuning source, a dataset whose split has no judged query. Each error names the
    dataset or system."""
    from densekit.reranker.base import resolve_spec

    from .reranking import tuning_split
    from .data import load_split, resolve_dataset

    check_definitions(suite)
    tuned = [s.name for s in suite.systems if "auto" in (s.hybrid_weight, s.fuse)]
    heldout = {}
    for d in suite.datasets:
        folder = resolve_dataset(d.data or d.name)
        load_split(folder, d.split)  # the split exists and has judged queries with text
        for path in [*d.runs.values(), *d.tune_runs.values()]:
            if not (folder / path).is_file():
                raise DataError(f"dataset {d.name!r}: saved run {folder / path} does not exist")
        if d.role == "heldout":
            heldout[(folder.resolve(), d.split)] = d.name
    tunes = [d for d in suite.datasets if d.role == "tune"]
    if tuned and not tunes:
        raise DataError(f"system {tuned[0]!r} chooses a weight on tuning data ('auto'), but no dataset has role tune")
    for d in tunes if tuned else []:
        folder = resolve_dataset(d.data or d.name)
        try:
            tune = tuning_split(folder, d.split)
        except ValueError:
            raise DataError(f"system {tuned[0]!r} chooses a weight on tuning data ('auto'), but the tune dataset "
                            f"{d.name!r} has no tuning split (dev, train, or dl20 for dl19): give it one, make it "
                            "heldout, or give a fixed weight") from None
        if (folder.resolve(), tune) in heldout:
            raise DataError(f"dataset {d.name!r} would choose its weights on split {tune!r}, which is the held-out "
                            f"dataset {heldout[(folder.resolve(), tune)]!r}: a held-out dataset is never a tuning "
                            "source; make one of them tune data or drop it")
    for s in suite.systems:
        if s.reranker:
            resolve_spec(s.reranker)


def cell_key(dataset: DatasetSpec, system: SystemSpec, pooled: dict | None) -> str:
    """What a cell's result depends on: both definitions, the settings pooled from tune datasets, and the content
    of the dataset's saved runs (a regenerated run file is another first stage)."""
    from .data import resolve_dataset

    payload = {"format": FORMAT, "dataset": asdict(dataset), "system": asdict(system), "pooled": pooled}
    saved = {**dataset.runs, **{f"tune:{k}": v for k, v in dataset.tune_runs.items()}}
    if saved:
        folder = resolve_dataset(dataset.data or dataset.name)
        payload["run_sha256"] = {k: hashlib.sha256((folder / v).read_bytes()).hexdigest() for k, v in sorted(saved.items())}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cells(suite: Suite) -> list[tuple[DatasetSpec, SystemSpec]]:
    """Tune datasets first (their tuning curves set the held-out datasets' weights), in suite order."""
    ordered = [d for d in suite.datasets if d.role == "tune"] + [d for d in suite.datasets if d.role != "tune"]
    return [(d, s) for d in ordered for s in suite.systems]


def _pooled(suite: Suite, system: SystemSpec, out: Path) -> dict | None:
    """For a held-out cell of a system with ``auto`` settings: ``{"hybrid" / "fuse": weight, "from": [...]}``, the
    grid weight with the best mean tuning curve over the tune datasets' cells of the same system."""
    wanted = [k for k, v in (("hybrid", system.hybrid_weight), ("fuse", system.fuse)) if v == "auto"]
    if not wanted:
        return None
    pooled: dict = {"from": []}
    curves = {k: [] for k in wanted}
    for d in suite.datasets:
        if d.role != "tune":
            continue
        cell = _read_cell(out, d, system, cell_key(d, system, None))  # the tune cell of this very definition
        for k in wanted:
            setting = (cell or {}).get("result", {}).get("system", {}).get(k) or {}
            if setting.get("curve"):
                curves[k].append(dict((float(w), v) for w, v in setting["curve"]))
                if f"{d.name}:{setting['tuned_on']}" not in pooled["from"]:
                    pooled["from"].append(f"{d.name}:{setting['tuned_on']}")
    for k in wanted:
        if not curves[k]:
            raise DataError(f"system {system.name!r}: no tune dataset gave a tuning curve for its {k} weight")
        grid = sorted(set.intersection(*(set(c) for c in curves[k])))
        mean = {w: sum(c[w] for c in curves[k]) / len(curves[k]) for w in grid}
        best = max(mean.values())
        pooled[k] = min(w for w in grid if mean[w] == best)
    return pooled


def _cell_dir(out: Path, dataset: DatasetSpec, system: SystemSpec) -> Path:
    return out / "cells" / dataset.name / system.name


def _compress_run(folder: Path) -> Path:
    """The cell's run as ``run.trec.gz`` (a tenth of the TREC file's size: cells are meant to be committed), from
    the ``run.trec`` that ``jobs.evaluate`` wrote; returns its path."""
    import gzip
    import os

    plain, packed = folder / "run.trec", folder / "run.trec.gz"
    if plain.exists():
        tmp = folder / ".run.trec.gz.tmp"
        tmp.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))  # mtime 0: the same run, the same bytes
        os.replace(tmp, packed)
        plain.unlink()
    return packed


def _read_cell(out: Path, dataset: DatasetSpec, system: SystemSpec, key: str | None = None) -> dict | None:
    """The cell's ``cell.json``, or None; with ``key``, block until a cell of that key is there (another process
    of the same benchmark is running it, or re-running a stale one)."""
    path = _cell_dir(out, dataset, system) / "cell.json"
    while True:
        cell = json.loads(path.read_text()) if path.exists() else None
        if key is None or (cell is not None and cell.get("key") == key):
            return cell
        time.sleep(1.0)


def _index_dir(indexes: Path, data: Path, model: str) -> Path:
    """One index per corpus folder and model, whatever the datasets or systems using it: readable names plus a
    short hash of the resolved folder and the exact model name (two folders called ``scifact`` differ)."""
    tag = hashlib.sha256(f"{data.resolve()}\0{model}".encode()).hexdigest()[:8]
    return indexes / f"{data.name}--{re.sub(r'[^A-Za-z0-9._-]+', '-', model).strip('-')}--{tag}"


def build_indexes(suite: Suite, indexes: Path, world: int = 1, rank: int = 0, progress=print) -> dict[str, float]:
    """Build every dense index the suite needs that does not exist yet (index ``i`` on rank ``i % world``, through
    ``jobs.build_index``), then wait until all exist: no two processes ever encode one corpus. Returns the seconds
    each index built here took."""
    from densekit.core.io import artefact_kind

    from . import jobs
    from .data import resolve_dataset

    needed = {}
    for d in suite.datasets:
        for s in suite.systems:
            _, model = parse_first_stage(s.first_stage)
            if model is not None:
                data = resolve_dataset(d.data or d.name)
                needed.setdefault(_index_dir(indexes, data, model), (data, model))
    seconds = {}
    for i, (folder, (data, model)) in enumerate(sorted(needed.items())):
        if i % world == rank and artefact_kind(folder) != "index":
            progress(f"index {i + 1}/{len(needed)}: encoding {data.name} with {model}")
            start = time.perf_counter()
            jobs.build_index(str(data), model, str(folder), num_shards=1, shard_index=0)
            seconds[folder.name] = round(time.perf_counter() - start, 1)
    while not all(artefact_kind(folder) == "index" for folder in needed):
        time.sleep(1.0)
    return seconds


def run_cell(suite: Suite, dataset: DatasetSpec, system: SystemSpec, out: Path, pooled: dict | None,
             indexes: Path, process: str = "0/1") -> dict:
    """Run one cell through ``jobs.evaluate`` (the ``EvalConfig`` of the cell) and keep its run and ``cell.json``;
    dense indexes in ``indexes``."""
    from . import jobs
    from .config import EvalConfig

    from .data import resolve_dataset

    notes: list[str] = []
    kind, model = parse_first_stage(system.first_stage)
    data = resolve_dataset(dataset.data or dataset.name)
    saved = str(data / dataset.runs[kind]) if kind in dataset.runs else None
    tune_run = str(data / dataset.tune_runs[kind]) if kind in dataset.tune_runs else None
    hybrid_weight, fuse = system.hybrid_weight, system.fuse
    if dataset.role != "tune" and pooled:
        hybrid_weight, fuse = pooled.get("hybrid", hybrid_weight), pooled.get("fuse", fuse)
    folder = _cell_dir(out, dataset, system)
    folder.mkdir(parents=True, exist_ok=True)
    index = str(_index_dir(indexes, data, model)) if model is not None else None
    config = EvalConfig(
        str(data), dataset.split, retriever=None if saved else kind, run=saved,
        models=[model] if model else None, index=index, hybrid_weight=hybrid_weight if kind == "hybrid" else None,
        hybrid_norm=system.hybrid_norm if kind == "hybrid" else None, top_k=system.top_k,
        max_queries=dataset.max_queries, relevance_level=dataset.relevance_level, save_run=str(folder / "run.trec"),
        overwrite=True, reranker=system.reranker, rerank_top_k=system.depth if system.reranker else None,
        fuse=fuse if system.reranker else None, tune_run=tune_run if fuse == "auto" and saved else None,
        score_cache=str(out / "scores") if system.reranker else None)
    results = jobs.evaluate(config, note=notes.append)
    (result,) = results.values()
    _compress_run(folder)
    cell = {"key": cell_key(dataset, system, pooled), "dataset": asdict(dataset), "system": asdict(system),
            "pooled": pooled, "result": result, "notes": notes, "process": process}
    atomic_write_text(folder / "cell.json", json.dumps(cell, indent=1, allow_nan=False))
    return cell


def run_benchmark(suite: Suite, out: str | Path, indexes: str | Path | None = None, progress=None) -> dict:
    """Run every cell not already finished (see the module docstring) and write the table; dense indexes are
    built in (or reused from) ``indexes`` (default ``<out>/indexes``). Returns the table (empty on ranks > 0)."""
    from .jobs import launcher_shards

    out = Path(out)
    indexes = Path(indexes) if indexes is not None else out / "indexes"
    progress = progress or (lambda message: print(f"densekit: {message}", file=sys.stderr, flush=True))
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None or manifest.get("kind") != "benchmark":
        check_target(out, "benchmark")  # new or empty; anything else is refused (a user's folder, another kind)
    elif manifest.get("suite") != suite.name:
        raise DataError(f"{out}: holds the benchmark of suite {manifest.get('suite')!r}, not {suite.name!r}; "
                        "choose another --out (its cells are that suite's)")
    if indexes.exists() and not indexes.is_dir():
        raise DataError(f"{indexes}: a file is in the way of the folder of dense indexes; give a folder (--indexes)")
    check_writable(indexes / "index")
    world, rank = launcher_shards() or (1, 0)
    if manifest is None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "densekit.json", json.dumps({"kind": "benchmark", "format": FORMAT, "suite": suite.name}))
    while read_manifest(out) is None:  # the other processes wait for rank 0 to claim the folder
        time.sleep(0.5)
    with folder_lock(out, f"process-{rank}-of-{world}"):  # one benchmark process per rank and folder at a time
        return _run_cells(suite, out, indexes, world, rank, progress)


def _run_cells(suite: Suite, out: Path, indexes: Path, world: int, rank: int, progress) -> dict:
    started = time.perf_counter()
    built = build_indexes(suite, indexes, world, rank, progress)
    cells = _cells(suite)
    ran = 0
    for i, (dataset, system) in enumerate(cells):
        if i % world != rank:
            continue
        pooled = _pooled(suite, system, out) if dataset.role != "tune" else None
        key = cell_key(dataset, system, pooled)
        done = _read_cell(out, dataset, system)
        where = f"cell {i + 1}/{len(cells)} {dataset.name} x {system.name}"
        if done is not None and done.get("key") == key:
            (_cell_dir(out, dataset, system) / "run.trec").unlink(missing_ok=True)  # a killed re-run's leftover
            progress(f"{where}: done before (cached)")
            continue
        if done is not None:
            progress(f"{where}: its definition changed since it ran; running it again")
        start = time.perf_counter()
        run_cell(suite, dataset, system, out, pooled, indexes, f"{rank}/{world}")
        ran += 1
        progress(f"{where}: finished in {time.perf_counter() - start:.1f} s")
    _log_invocation(out, {"process": f"{rank}/{world}", "index_seconds": built, "cells_run": ran,
                          "seconds": round(time.perf_counter() - started, 1)})
    if rank != 0:
        return {}
    for dataset, system in cells:  # every process's cells, of the current definitions
        pooled = _pooled(suite, system, out) if dataset.role != "tune" else None
        _read_cell(out, dataset, system, cell_key(dataset, system, pooled))
    table = make_table(suite, out)
    write_table(table, out)
    return table


def _log_invocation(out: Path, row: dict) -> None:
    """Append what this process did (indexes built and their seconds, cells run, wall seconds) to
    ``<out>/invocations.<rank>.jsonl``: how long a full run takes, kept beside the cells."""
    path = out / f"invocations.{row['process'].split('/')[0]}.jsonl"
    old = path.read_text() if path.exists() else ""
    atomic_write_text(path, old + json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **row}) + "\n")


def first_stage_system(suite: Suite, system: SystemSpec) -> str | None:
    """The name of the suite's system that is ``system``'s first stage alone (same first stage, hybrid settings and
    depth, no reranker), None when ``system`` reranks nothing or the suite has no such row."""
    if system.reranker is None:
        return None
    same = lambda s: (s.first_stage, s.hybrid_weight, s.hybrid_norm, s.top_k) == \
        (system.first_stage, system.hybrid_weight, system.hybrid_norm, system.top_k)
    return next((s.name for s in suite.systems if s.reranker is None and same(s)), None)


def _paired(a: list[float], b: list[float], permutations: int, seed: int) -> dict:
    """Pooled paired comparison of per-query values ``a`` against ``b`` (``report``'s tests)."""
    import numpy as np

    from . import report

    t, p = report.ttest(a, b)
    return {"queries": len(a), "diff": float(np.mean(a) - np.mean(b)), "p_ttest": p,
            "p_random": report.randomisation_test(a, b, permutations, seed), **report.win_tie_loss(a, b)}


def make_table(suite: Suite, out: Path, permutations: int = 10_000, seed: int = 0) -> dict:
    """The BEIR table of the finished cells: ``report.compare`` per dataset (its per-query values, paired tests
    and win/tie/loss), Holm over every (system, dataset) cell, macro means, a pooled held-out test against the
    baseline and, for a reranking system, against its own first stage (``first_stage_system``): pooled over the
    held-out datasets and per held-out dataset (``heldout_vs_first_stage``)."""
    import numpy as np

    from . import report
    from .data import load_dataset, resolve_dataset, select_queries
    from densekit.eval.runfile import read_run

    systems = [s.name for s in suite.systems]
    cells, pooled_values = {}, {name: [] for name in systems}
    by_dataset: dict[str, dict[str, list[float]]] = {}
    for d in suite.datasets:
        ds = load_dataset(resolve_dataset(d.data or d.name), d.split, check_ids=False)
        runs = {s.name: read_run(_cell_dir(out, d, s) / "run.trec.gz") for s in suite.systems}
        result = report.compare(runs, ds.qrels, [suite.metric], suite.baseline, select_queries(ds.queries, d.max_queries),
                                permutations, seed, d.relevance_level)
        for system in suite.systems:
            name = system.name
            cell = {"mean": result["systems"][name]["means"][suite.metric], "queries": len(result["queries"])}
            cell.update(result["systems"][name].get("tests", {}).get(suite.metric, {}))
            saved = _read_cell(out, d, system)["result"]["system"]
            cell["settings"] = {k: {x: y for x, y in saved[k].items() if x != "curve"} for k in ("hybrid", "fuse")
                                if saved.get(k)}
            cells[(name, d.name)] = cell
            if d.role == "heldout":
                pooled_values[name] += result["per_query"][name][suite.metric]
                by_dataset.setdefault(d.name, {})[name] = result["per_query"][name][suite.metric]
    for test in ("p_ttest", "p_random"):
        adjusted = report.holm({f"{s}\0{d}": c[test] for (s, d), c in cells.items() if test in c})
        for key, value in adjusted.items():
            s, d = key.split("\0")
            cells[(s, d)][f"{test}_holm_cells"] = value
    heldout = [d.name for d in suite.datasets if d.role == "heldout"]
    rows = {}
    for name in systems:
        means = [cells[(name, d.name)]["mean"] for d in suite.datasets]
        row = {"mean_all": float(np.mean(means)),
               "mean_heldout": float(np.mean([cells[(name, d)]["mean"] for d in heldout])) if heldout else None}
        if heldout and name != suite.baseline:
            row["heldout_pooled"] = _paired(pooled_values[name], pooled_values[suite.baseline], permutations, seed)
        first = first_stage_system(suite, next(s for s in suite.systems if s.name == name))
        if heldout and first is not None:
            row["first_stage"] = first
            row["heldout_vs_first_stage"] = {
                "pooled": _paired(pooled_values[name], pooled_values[first], permutations, seed),
                "by_dataset": {d: float(np.mean(by_dataset[d][name]) - np.mean(by_dataset[d][first])) for d in heldout}}
        rows[name] = row
    return {"suite": suite.name, "metric": suite.metric, "baseline": suite.baseline,
            "datasets": [{"name": d.name, "split": d.split, "role": d.role,
                          "queries": cells[(suite.baseline, d.name)]["queries"]} for d in suite.datasets],
            "systems": systems, "cells": {f"{s}|{d}": c for (s, d), c in cells.items()}, "rows": rows}


def _mark(cell: dict, alpha: float = 0.05) -> str:
    if "p_ttest_holm_cells" not in cell:
        return ""
    significant = cell["p_ttest_holm_cells"] < alpha and cell["p_random_holm_cells"] < alpha
    return ("+" if cell["diff"] > 0 else "-") if significant else ""


def to_markdown(table: dict, digits: int = 4) -> str:
    """Rows systems, columns datasets (role and queries in the header), then the two means; a cell is marked
    ``+`` / ``-`` where both Holm-corrected tests against the baseline are below 0.05."""
    datasets = table["datasets"]
    head = ["system"] + [f"{d['name']} ({'tune' if d['role'] == 'tune' else 'held out'}, {d['queries']} q)" for d in datasets]
    head += ["mean", "held-out mean"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name in table["systems"]:
        cells = [table["cells"][f"{name}|{d['name']}"] for d in datasets]
        row = table["rows"][name]
        values = [f"{c['mean']:.{digits}f}{_mark(c)}" for c in cells]
        values += [f"{row['mean_all']:.{digits}f}", "" if row["mean_heldout"] is None else f"{row['mean_heldout']:.{digits}f}"]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines) + (f"\n\n{table['metric']}; + / -: above / below the baseline {table['baseline']!r} with "
                               "p < 0.05 in both the paired t-test and the randomisation test, Holm-corrected over all "
                               "cells.\n")


def to_latex(table: dict, digits: int = 4) -> str:
    datasets = table["datasets"]
    lines = [r"\begin{tabular}{l" + "r" * (len(datasets) + 2) + "}", r"\toprule",
             "System & " + " & ".join(d["name"].replace("_", r"\_") for d in datasets) + r" & Mean & Held-out \\",
             r"\midrule"]
    for name in table["systems"]:
        row = table["rows"][name]
        cells = []
        for d in datasets:
            c = table["cells"][f"{name}|{d['name']}"]
            mark = _mark(c)
            cells.append(f"{c['mean']:.{digits}f}" + (r"$^{\uparrow}$" if mark == "+" else r"$^{\downarrow}$" if mark else ""))
        held = "" if row["mean_heldout"] is None else f"{row['mean_heldout']:.{digits}f}"
        lines.append(name.replace("_", r"\_") + " & " + " & ".join(cells) + f" & {row['mean_all']:.{digits}f} & {held}" + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_table(table: dict, out: Path) -> None:
    """``table.md``, ``table.tex``, ``table.json`` and ``heatmap.png`` in the benchmark folder (densekit's own)."""
    from .plots import plot_heatmap
    from .report import _json_safe

    atomic_write_text(out / "table.md", to_markdown(table))
    atomic_write_text(out / "table.tex", to_latex(table))
    atomic_write_text(out / "table.json", json.dumps(_json_safe(table), indent=1, allow_nan=False) + "\n")
    names = [d["name"] for d in table["datasets"]]
    base = table["baseline"]
    diffs = [[table["cells"][f"{s}|{d}"]["mean"] - table["cells"][f"{base}|{d}"]["mean"] for d in names]
             for s in table["systems"]]
    plot_heatmap(diffs, table["systems"], names, out / "heatmap.png", f"{table['metric']} minus {base}",
                 f"{table['metric']} difference", overwrite=True)
