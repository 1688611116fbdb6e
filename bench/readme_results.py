"""Write the README's generated result sections from bench/results (no figure in them is typed by hand).

    python bench/readme_results.py            # rewrite README.md in place
    python bench/readme_results.py --check    # exit 1 when README.md differs from what the results say

A section lies between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``; each NAME is rendered below from
its results file: ``beir`` (``densekit benchmark bench/beir.toml``: bench/results/beir/table.json) and
``hybrid-scifact`` (``densekit compare``: bench/results/hybrid-scifact.json).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def beir() -> str:
    from densekit.eval.benchmark import to_markdown

    table = json.loads((RESULTS / "beir" / "table.json").read_text())
    lines = [to_markdown(table).rstrip()]
    base = table["baseline"]
    for name in table["systems"]:
        pooled = table["rows"][name].get("heldout_pooled")
        if not pooled:
            continue
        verdict = "gains over" if pooled["diff"] > 0 else "loses to"
        lines.append(f"- {name} {verdict} {base} on the held-out datasets pooled: {pooled['diff']:+.4f} over "
                     f"{pooled['queries']} queries (paired t p = {pooled['p_ttest']:.2g}, randomisation p = "
                     f"{pooled['p_random']:.2g}; {pooled['win']} wins, {pooled['loss']} losses)")
    for name in table["systems"]:
        used = []
        for d in table["datasets"]:
            for kind, setting in table["cells"][f"{name}|{d['name']}"].get("settings", {}).items():
                where = f"tuned on its {setting['tuned_on']} split" if setting["tuned_on"] else "pooled over the tune datasets"
                used.append(f"{d['name']} {setting['weight']} ({where})")
        if used:
            lines.append(f"- {name}'s weights: " + "; ".join(used))
    invocations = [json.loads(line) for line in (RESULTS / "beir" / "invocations.0.jsonl").read_text().splitlines()]
    full = next((row for row in invocations if row["cells_run"] == len(table["cells"])), None)
    if full is not None:
        encoding = sum(full["index_seconds"].values())
        lines.append(f"- a full run from empty folders took {full['seconds'] / 60:.1f} min here ({full['time'][:10]}), "
                     f"{encoding / 60:.1f} min of it encoding the {len(full['index_seconds'])} corpora once "
                     f"(`invocations.0.jsonl`); a rerun of finished cells reads them back")
    overhead = [json.loads(line) for line in (RESULTS / "benchmark_overhead.jsonl").read_text().splitlines()][-1]
    lines.append(f"- the benchmark's own cost (`python bench/benchmark_overhead.py`, {overhead['cells']} BM25 and dense "
                 f"cells, indexes built): {overhead['ratio_benchmark_over_one_by_one']:.2f}x the time of the same cells "
                 f"run one by one through `densekit eval` + `densekit compare` (median of {len(overhead['seconds']['benchmark'])}, "
                 "same run; one process instead of one per cell), and no corpus encoded")
    return "\n".join(lines) + "\n"


def hybrid_scifact() -> str:
    from densekit.eval.report import to_markdown

    return to_markdown(json.loads((RESULTS / "hybrid-scifact.json").read_text())).rstrip() + "\n"


SECTIONS = {"beir": beir, "hybrid-scifact": hybrid_scifact}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no section {name!r} (<!-- generated: {name} --> ... <!-- end: {name} -->)")
        text = pattern.sub(lambda m: m.group(1) + make() + m.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md is out of date: run python bench/readme_results.py", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
