#!/usr/bin/env bash
# Paper features vs paper features + depth, for SVM, CRF and the gap rule, on the embedded Gemma 3 270M.
# Trains on 400 five-shot SST-2 train prompts, scores on 200 five-shot dev prompts (disjoint splits).
# Writes results/sst2-gemma3-270m.json. Resumable: rerun after an interruption.
set -euo pipefail
work=${1:-runs}
features=gap,top_prob,depth,cos_hidden,cos_attn,cos_mlp
mkdir -p "$work" results
# One seed for both splits: the prompts of `adainfer eval`'s sst2 5-shot setting with that seed.
adainfer prompts sst2 --split train --shots 5 --limit 400 --seed 0 -o "$work/sst2_train.jsonl"
adainfer prompts sst2 --split eval --shots 5 --limit 200 --seed 0 -o "$work/sst2_eval.jsonl"
adainfer collect "$work/sst2_train.jsonl" -o "$work/sst2_rows.jsonl" --features "$features"
adainfer collect "$work/sst2_eval.jsonl" -o "$work/sst2_eval_rows.jsonl" --features "$features"
for policy in svm crf; do
  adainfer train "$work/sst2_rows.jsonl" --policy "$policy" --features gap,top_prob -o "$work/policies/$policy-paper" >/dev/null
  adainfer train "$work/sst2_rows.jsonl" --policy "$policy" --features gap,top_prob,depth -o "$work/policies/$policy-depth" >/dev/null
done
adainfer train "$work/sst2_rows.jsonl" --policy gap --threshold 0.8 -o "$work/policies/gap-0.8" >/dev/null
adainfer evaluate "$work/sst2_eval_rows.jsonl" $(for p in svm-paper svm-depth crf-paper crf-depth gap-0.8; do echo -p "$work/policies/$p"; done) \
  > results/sst2-gemma3-270m.json

# The same policy through real early exit, on the first 20 dev prompts (answers, exit layers, costs).
head -20 "$work/sst2_eval.jsonl" > "$work/sst2_eval20.jsonl"
adainfer predict "$work/sst2_eval20.jsonl" -p "$work/policies/svm-depth" -o "$work/sst2_eval20_predictions.jsonl"
