#!/usr/bin/env bash
# The paper's tables and figures on the embedded Gemma 3 270M, every task group, zero- and 5-shot.
# Per-layer traces are cached under runs/cache and reused: rerunning resumes where it stopped, and
# a larger --limit extends the cache. The two collections run side by side (one thread each).
# The traces behind the tables are then exported to results/traces/gemma3-270m (compact .npz) with
# a measured cost profile, and the tables are built from there, so that
# `adainfer report results/traces/gemma3-270m --out results/gemma3-270m` rebuilds them from a
# fresh clone without the model. Run from the repository root (data from ../shared/data or $ADAINFER_DATA).
set -euo pipefail
tasks=${TASKS:-sst2,ag_news,fv_abstractive,fv_extractive,relations,commonsense_qa,mmlu,squad}
limit=${LIMIT:-200}          # evaluation prompts per task and setting
train_limit=${TRAIN_LIMIT:-100}  # classifier-training prompts per task and setting
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
adainfer eval --tasks "$tasks" --shots 0 --limit "$limit" --train-limit "$train_limit" --out runs/report-0shot &
zero_shot=$!
adainfer eval --tasks "$tasks" --shots 5 --limit "$limit" --train-limit "$train_limit" --out runs/report-5shot
wait "$zero_shot"  # its exit status, so a failed collection stops the script
model_dir=$(ls -d runs/cache/Gemma3ForCausalLM-* | head -1)
traces=results/traces/gemma3-270m
adainfer export-traces "$model_dir" --out "$traces" --tasks "$tasks" --shots 0,5
# Seconds of one layer, one full-vocabulary and one candidate check, at the prompts' lengths; run
# it on a quiet machine (nothing else running), one thread, as the collection ran.
adainfer profile --seq-lens 16,32,64,128,256,512,1024,2048 --repeats 5 -o "$traces/cost_profile.json"
adainfer report "$traces" --out results/gemma3-270m
