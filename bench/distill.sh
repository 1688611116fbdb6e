#!/usr/bin/env bash
# A reranker distilled into the dual encoder (issue 24): SmolLM2-135M-Instruct query likelihood (the reranking stage
# of the BEIR table's best reranking pipeline) scores scifact train's positives and mined negatives; all-MiniLM-L6-v2
# is trained on its margins with Margin-MSE, with the settings of the InfoNCE encoder of bench/encoders.sh (steps,
# batch, seed, lr, temperature); then scifact test, all 300 queries, against that InfoNCE encoder and zero-shot.
# Needs bash bench/encoders.sh first (its index and InfoNCE model). Rerun to resume: the teacher's scores are cached
# per query group in bench/results/distill/teacher-cache (committed), a finished model is kept.
#
#   bash bench/distill.sh        # ~1 h of SmolLM2 scoring on 2 CPU cores, ~15 min of training
set -euo pipefail
model=sentence-transformers/all-MiniLM-L6-v2
mkdir -p runs/distill
[ -f runs/distill/scifact-train-teacher.jsonl ] || densekit mine --data scifact --split train --index runs/enc/scifact-index \
    --rank-from 0 --rank-to 30 --max-negatives 3 --max-ratio 0.95 --teacher qlm:HuggingFaceTB/SmolLM2-135M-Instruct \
    --teacher-cache bench/results/distill/teacher-cache --out runs/distill/scifact-train-teacher.jsonl
out=runs/enc/margin-mse-scifact
if [ ! -f "$out/model/densekit.json" ]; then
  resume=(); [ -d "$out" ] && resume=(--resume)
  densekit train retriever --data scifact --split train --model "$model" --train-file runs/distill/scifact-train-teacher.jsonl \
      --loss margin-mse --n-negatives 1 --epochs 2 --batch-size 16 --lr 2e-5 --temperature 0.05 --seed 42 \
      --checkpoint-every 25 --out "$out" "${resume[@]}"
fi
for name in margin-mse infonce; do  # each index built once in runs/distill/, reused by a rerun
  densekit eval --data scifact --retriever dense --model "runs/enc/$name-scifact/model" --index "runs/distill/index-$name" \
      --save-run "runs/distill/$name.trec" --overwrite > /dev/null
done
densekit eval --data scifact --retriever dense --model "$model" --index runs/enc/scifact-index \
    --save-run runs/distill/zero-shot.trec --overwrite > /dev/null
densekit compare margin-mse=runs/distill/margin-mse.trec infonce=runs/distill/infonce.trec \
    zero-shot=runs/distill/zero-shot.trec --data scifact --baseline infonce --metrics ndcg@10 recall@100 \
    --json bench/results/distill-scifact.json
python bench/teacher_stats.py runs/distill/scifact-train-teacher.jsonl --tau 0.05 --index runs/enc/scifact-index \
    > bench/results/distill/teacher_stats.json
