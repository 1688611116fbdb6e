"""Plots of evaluation results (matplotlib, headless): ROC curves of several systems on one figure; sorted
per-query differences of systems vs a baseline (``report.compare``); learning curves; heat maps; the SFT / CL
gradient weights logged by pointwise reranker training."""
from __future__ import annotations

from pathlib import Path

from . import metrics as M


def plot_roc(runs: dict[str, dict], qrels: dict, path: str | Path, k: int | None = 100, relevance_level: int = 1,
             overwrite: bool = False) -> Path:
    """Global ROC curve (all relevant vs non-relevant (query, doc) scores in each query's top ``k``)
    of every run in ``runs`` (label -> run), with its AUC in the legend; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for label, run in runs.items():
        scores, labels = M.labelled_scores(qrels, run, k, relevance_level)
        fpr, tpr = M.roc_curve(scores, labels)
        ax.plot(fpr, tpr, label=f"{label} (AUC {M.auc(scores, labels):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC over top-{k} candidates" if k else "ROC")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, overwrite)


def plot_differences(result: dict, path: str | Path, overwrite: bool = False) -> Path:
    """One panel per metric of a ``report.compare`` result: per system, its per-query differences from the
    baseline sorted from largest to smallest (a line above 0 on the left = queries it wins); saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics, baseline, per_query = result["metrics"], result["baseline"], result["per_query"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False, constrained_layout=True)
    for ax, metric in zip(axes[0], metrics):
        base = np.asarray(per_query[baseline][metric], dtype=float)
        for name, values in per_query.items():
            if name != baseline:
                diff = np.sort(np.asarray(values[metric], dtype=float) - base)[::-1]
                ax.plot(np.arange(1, len(diff) + 1), diff, label=f"{name} (mean {diff.mean():+.4f})")
        ax.axhline(0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("query (sorted by difference)")
        ax.set_ylabel(f"{metric} - {baseline}")
        ax.set_title(metric)
        ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path, overwrite)


def _save(fig, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created) and free it; an existing file is replaced only
    with ``overwrite`` (the output-path rule, ``densekit.core.io.atomic_file``)."""
    import matplotlib.pyplot as plt

    from densekit.core.io import atomic_file

    try:
        with atomic_file(path, overwrite) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return Path(path)


def plot_learning_curves(curves: dict[str, list[tuple[float, float]]], path: str | Path, metric: str = "nDCG@10",
                         references: dict[str, float] | None = None, xlabel: str = "training groups seen",
                         overwrite: bool = False) -> Path:
    """One line per system through its ``(x, value)`` points (e.g. training groups seen -> nDCG@10; 0 = zero-shot)
    and a dotted horizontal line per reference value (e.g. the first stage); saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in curves.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    for label, value in (references or {}).items():
        ax.axhline(value, linestyle=":", linewidth=1, color="grey")
        ax.annotate(f"{label} {value:.3f}", (0, value), fontsize=7, va="bottom")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7)  # beside the axes: never over a point
    return _save(fig, path, overwrite)


def plot_heatmap(values, row_labels: list[str], col_labels: list[str], path: str | Path, title: str = "",
                 label: str = "nDCG@10", overwrite: bool = False) -> Path:
    """A heat map of ``values`` ``[rows, cols]`` with the best cell outlined; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(col_labels), 1.0 + 0.25 * len(row_labels)))
    image = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=35, ha="right", fontsize=7)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=7)
    r, c = np.unravel_index(np.nanargmax(values), values.shape)
    ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label=label)
    return _save(fig, path, overwrite)


def plot_gradient_weights(logs: dict[str, list[dict]], path: str | Path, overwrite: bool = False) -> Path:
    """The per-step SFT and CL gradient weights of pointwise reranker training runs, one panel per weight kind
    (the SFT / CL analysis of the paper, in small): for each run (``{name: the rows of its train_log.jsonl}``,
    e.g. ``checkpoints.read_train_log(run_dir)["log"]``), the mean weight of the positive (solid) and of the
    negatives (dashed) per step, read from the rows' ``w_sft_pos``, ``w_sft_neg``, ``w_cl_pos``, ``w_cl_neg``;
    saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, kind in zip(axes, ("sft", "cl")):
        for run, rows in logs.items():
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r[f"w_{kind}_pos"] for r in rows], label=f"{run} run: positive")
            ax.plot(steps, [r[f"w_{kind}_neg"] for r in rows], linestyle="--", label=f"{run} run: negatives")
        ax.set_title(f"{kind.upper()} gradient weight per example")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    return _save(fig, path, overwrite)
