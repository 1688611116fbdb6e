"""What a teacher-scored training file asks of a student: how often the teacher orders a (positive, negative) pair
right, and the size of its margins s(q, d+) - s(q, d-), the targets Margin-MSE regresses the student's
(q.d+ - q.d-) / tau on (so a normalised student must reach cosine gaps of margin x tau). With ``--index`` it also
prints ``tau_matched``, the median student gap over the median teacher margin: the tau at which the targets are on
the student's own scale.

    python bench/teacher_stats.py runs/distill/scifact-train-hybrid-teacher.jsonl --index runs/enc/scifact-index \
        > bench/results/distill/teacher_stats.json

With ``--index`` (a densekit index of the corpus), the same pairs' cosine gaps of the index's encoder (the student
before training) are measured beside them: what the student gives, against what Margin-MSE asks of it.
"""
from __future__ import annotations

import argparse
import json
import statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("train_file", help="JSONL from `densekit mine --teacher` (positive_scores / negative_scores)")
    p.add_argument("--tau", type=float, help="the student's temperature in training (default: tau_matched with "
                   "--index, else 0.05)")
    p.add_argument("--index", help="a densekit index of the corpus: the student's cosine gaps on the same pairs")
    args = p.parse_args()
    margins, groups, top, rows = [], 0, 0, []
    with open(args.train_file) as fh:
        for line in fh:
            row = json.loads(line)
            if not row["negatives"]:
                continue  # training skips it too
            groups += 1
            rows.append(row)
            top += max(row["positive_scores"]) > max(row["negative_scores"])
            margins += [p - n for p in row["positive_scores"] for n in row["negative_scores"]]
    median_abs = statistics.median(abs(m) for m in margins)
    student = student_gaps(rows, args.index) if args.index else {}
    if student:  # the tau at which Margin-MSE asks the student for its own median gap: tau = gap / margin
        student["tau_matched"] = round(student["student_cosine_gap_median_abs"] / median_abs, 3)
    tau = args.tau if args.tau is not None else student.get("tau_matched", 0.05)
    print(json.dumps({**student, "bench": "teacher_stats", "file": args.train_file, "groups": groups, "pairs": len(margins),
                      "pair_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4),
                      "positive_above_every_negative": round(top / groups, 4),
                      "margin_mean": round(statistics.fmean(margins), 4), "margin_sd": round(statistics.pstdev(margins), 4),
                      "margin_median_abs": round(median_abs, 4), "tau": tau,
                      "cosine_gap_asked": round(median_abs * tau, 4)}))


def student_gaps(rows: list[dict], index_dir: str) -> dict:
    """Median |q.d+ - q.d-| of the index's encoder over the rows' pairs (document vectors read back from the index)."""
    import numpy as np

    from densekit.retriever.encoder import DualEncoder
    from densekit.retriever.index import Index

    index = Index.load(index_dir)
    encoder = DualEncoder.from_pretrained(index.meta["model"])
    queries = encoder.encode([r["query"] for r in rows], is_query=True)
    gaps = []
    for q, row in zip(queries, rows):
        pos, neg = index.reconstruct(row["positives"]) @ q, index.reconstruct(row["negatives"]) @ q
        gaps += [float(a - b) for a in pos for b in neg]
    return {"student": index.meta["model"], "student_pair_accuracy": round(float(np.mean([g > 0 for g in gaps])), 4),
            "student_cosine_gap_median_abs": round(float(np.median(np.abs(gaps))), 4)}


if __name__ == "__main__":
    main()
