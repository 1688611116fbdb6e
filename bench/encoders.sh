#!/usr/bin/env bash
# Dual encoders for the BEIR table (issues 23, 24): all-MiniLM-L6-v2 fine-tuned on scifact train with InfoNCE and with
# MW, the same mined negatives, steps, batch, seed and learning rate (the settings of bench/train_scifact.py, fixed
# before any run); then both again on the even mixture of scifact train and nfcorpus train for the same 82 steps
# (nfcorpus negatives from ranks 0-30 without the score-ratio filter: with its ~43 judged positives a query, the
# filter's "0.95 x the lowest positive" left 127 of 2590 queries a negative). Held-out datasets are never read.
# Rerun to resume (finished models are kept).
#
#   bash bench/encoders.sh        # ~25 min on 2 CPU cores, ~25 more for the mixture
set -euo pipefail
model=sentence-transformers/all-MiniLM-L6-v2
mkdir -p runs/enc
[ -d runs/enc/scifact-index ] || densekit index build --data scifact --model "$model" --out runs/enc/scifact-index
[ -f runs/enc/scifact-train-negatives.jsonl ] || densekit mine --data scifact --split train --index runs/enc/scifact-index \
    --rank-from 0 --rank-to 30 --max-negatives 20 --max-ratio 0.95 --out runs/enc/scifact-train-negatives.jsonl
nf_index=runs/enc/nfcorpus-index
[ -d $nf_index ] || densekit index build --data nfcorpus --model "$model" --out $nf_index
[ -f runs/enc/nfcorpus-train-negatives.jsonl ] || densekit mine --data nfcorpus --split train --index $nf_index \
    --rank-from 0 --rank-to 30 --max-negatives 20 --out runs/enc/nfcorpus-train-negatives.jsonl
common=(--model "$model" --n-negatives 1 --batch-size 16 --lr 2e-5 --temperature 0.05 --seed 42 --checkpoint-every 25)
train() {  # train OUT ARGS...: train into OUT unless its model exists, resuming an interrupted run
  local out=$1; shift
  [ -f "$out/model/densekit.json" ] && { echo "done: $out"; return; }
  local resume=(); [ -d "$out" ] && resume=(--resume)
  densekit train retriever "${common[@]}" "$@" --out "$out" "${resume[@]}"
}
for loss in infonce mw; do
  train runs/enc/$loss-scifact --loss "$loss" --data scifact --split train \
      --train-file runs/enc/scifact-train-negatives.jsonl --epochs 2
done
for loss in infonce mw; do
  train runs/enc/$loss-mix --loss "$loss" --data scifact nfcorpus --split train --mix even \
      --train-file runs/enc/scifact-train-negatives.jsonl runs/enc/nfcorpus-train-negatives.jsonl --max-steps 82
done
