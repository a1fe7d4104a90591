#!/usr/bin/env bash
# End to end on the embedded Gemma 3 270M: few-shot SST-2 prompts -> per-layer rows -> SVM -> early-exit answers.
# Run from the repository root (the data are read from ../shared/data or $ADAINFER_DATA).
set -euo pipefail
out=${1:-runs/sst2-quickstart}
train=${TRAIN_PROMPTS:-300}
eval=${EVAL_PROMPTS:-20}
mkdir -p "$out"
# One seed for both splits: the prompts of `adainfer eval`'s sst2 5-shot setting with that seed.
adainfer prompts sst2 --split train --shots 5 --limit "$train" --seed 0 -o "$out/train.jsonl"
adainfer prompts sst2 --split eval --shots 5 --limit "$eval" --seed 0 -o "$out/eval.jsonl"
adainfer collect "$out/train.jsonl" -o "$out/rows.jsonl" --features gap,top_prob,depth
adainfer train "$out/rows.jsonl" --policy svm --features gap,top_prob,depth -o "$out/svm-depth"
adainfer predict "$out/eval.jsonl" --policy "$out/svm-depth" -o "$out/predictions.jsonl"
