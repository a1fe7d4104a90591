#!/usr/bin/env bash
# The paper's few-shot protocol, k in {5, 10, 15, 20} averaged, on the embedded Gemma 3 270M, for
# every task whose prompts stay short enough for this CPU: 100 evaluation and 50 classifier-training
# prompts per k (k = 5 comes from examples/paper_tables.sh, with 200 and 100). Left out: SQuAD (every
# demonstration carries its context paragraph), MMLU (5 dev rows a subject cap it at k = 5) and relations at
# k = 15, 20 (some relations have 9-12 training pairs; `adainfer eval` refuses such a grid up front).
# Run from the repository root after paper_tables.sh; traces are cached and an interrupted run
# resumes. The two collections run side by side, one thread each.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common=(--limit 100 --train-limit 50)
adainfer eval --tasks sst2,fv_abstractive,fv_extractive --shots 10,15,20 "${common[@]}" --out runs/report-gemma-k1 &
first=$!
adainfer eval --tasks ag_news,commonsense_qa --shots 10,15,20 "${common[@]}" --out runs/report-gemma-k2 &&
  adainfer eval --tasks relations --shots 10 "${common[@]}" --out runs/report-gemma-k3
wait "$first"  # its exit status, so a failed collection stops the script
traces=results/traces/gemma3-270m-kshot
adainfer export-traces "$(ls -d runs/cache/Gemma3ForCausalLM-* | head -1)" --out "$traces" \
  --tasks sst2,ag_news,commonsense_qa,fv_abstractive,fv_extractive,relations --shots 10,15,20
# k = 5: the committed traces of paper_tables.sh (200 evaluation, 100 training prompts), as they are.
for task in sst2 ag_news commonsense_qa fv_abstractive fv_extractive relations; do
  mkdir -p "$traces/$task" && cp -r "results/traces/gemma3-270m/$task/5shot-seed0" "$traces/$task/"
done
adainfer report "$traces" --out results/gemma3-270m-kshot --cost-profile results/traces/gemma3-270m/cost_profile.json
