"""Wall time of ``densekit --help`` and ``densekit train retriever --help`` next to ``python -c "import argparse"``.

Each command runs ``--repeats`` times in a fresh subprocess (same interpreter, same environment), in turn,
so load from other processes hits all three alike; the median is reported. ``densekit`` is the console
script beside this interpreter when installed, else ``python -m densekit.eval.cli``. Prints one JSON line:
seconds per command and each ratio to the interpreter-plus-argparse peer.

    python bench/cli_help.py > bench/results/cli_help.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def densekit_command() -> list[str]:
    script = Path(sys.executable).parent / "densekit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "densekit.eval.cli"]


def wall_seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    densekit = densekit_command()
    commands = {"peer: python -c 'import argparse'": [sys.executable, "-c", "import argparse"],
                "densekit --help": [*densekit, "--help"],
                "densekit train retriever --help": [*densekit, "train", "retriever", "--help"]}
    for argv in commands.values():  # warm the file cache once, untimed
        wall_seconds(argv)
    times = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            times[name].append(wall_seconds(argv))
    median = {name: statistics.median(values) for name, values in times.items()}
    peer = median["peer: python -c 'import argparse'"]
    print(json.dumps({
        "bench": "cli_help", "densekit": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(densekit)),
        "repeats": args.repeats, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "peer_s": round(peer, 4),
        "help_s": round(median["densekit --help"], 4),
        "train_retriever_help_s": round(median["densekit train retriever --help"], 4),
        "help_ratio": round(median["densekit --help"] / peer, 2),
        "train_retriever_help_ratio": round(median["densekit train retriever --help"] / peer, 2),
        "under_1s": max(median["densekit --help"], median["densekit train retriever --help"]) < 1.0,
    }))


if __name__ == "__main__":
    main()
