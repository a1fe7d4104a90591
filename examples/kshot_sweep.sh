#!/usr/bin/env bash
# The paper's few-shot protocol, k in {5, 10, 15, 20} averaged, on the embedded Gemma 3 270M, for the
# tasks whose prompts stay short enough for this CPU: 100 evaluation and 50 classifier-training
# prompts per k (k = 5 comes from examples/paper_tables.sh, with 200 and 100). Run from the
# repository root after paper_tables.sh; traces are cached and an interrupted run resumes.
set -euo pipefail
tasks=${TASKS:-sst2,fv_abstractive}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
adainfer eval --tasks "$tasks" --shots 10,15,20 --limit 100 --train-limit 50 --out runs/report-gemma-k
adainfer report "$(ls -d runs/cache/Gemma3ForCausalLM-* | head -1)" --out results/gemma3-270m-kshot --tasks "$tasks" --shots 5,10,15,20
