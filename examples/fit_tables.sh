#!/usr/bin/env bash
# `adainfer fit` on the issue's targets: SST-2 and AG News on the embedded Gemma 3 270M and on
# Qwen2.5-Coder-1.5B (200 calibration and 200 test prompts, epsilon = delta = 5 %), MMLU and
# CommonsenseQA (letters as the answer set) and a user JSONL task with a closed answer set
# (person -> sport, from one function-vector list) on Gemma. Each classifier (policy, card.json,
# card.md) lands in results/fit/<model>-<task>; traces are cached under runs/cache and a rerun
# resumes. Then benchmarks/fit_targets.py gathers the cards into one table.
# Run from the repository root; the runs take turns. Gemma's traces are collected by two Ray
# workers (`--ray --workers 2`, the ray extra), each on one thread, and every timing runs on one
# thread; Qwen (`pip install -e ".[qwen]"`, 6 GB fp32 per copy) collects in this process. On the
# 2-core machine: 3-6 minutes per Gemma fit, about 2 hours for the two Qwen ones.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=${ADAINFER_DATA:-../shared/data}
mkdir -p runs/user
python -c 'import json, sys; print("".join(json.dumps(row) + "\n" for row in json.load(open(sys.argv[1]))), end="")' \
  "$data/function_vectors/abstractive/person-sport.json" > runs/user/person-sport.jsonl

gemma() { adainfer fit "$1" -o "results/fit/gemma3-270m-$2" --ray --workers 2 "${@:3}"; }
qwen() { adainfer fit "$1" -o "results/fit/qwen2.5-coder-1.5b-$2" --model qwen2.5-coder-1.5b "${@:3}"; }

gemma sst2 sst2
gemma ag_news ag_news
gemma runs/user/person-sport.jsonl person-sport
gemma mmlu mmlu --shots 3 --train 60 --calibration 100 --test 100 --epsilon 0.1
gemma commonsense_qa commonsense_qa --shots 3 --train 60 --calibration 100 --test 100 --epsilon 0.1
qwen sst2 sst2 --train 60
qwen ag_news ag_news --shots 3 --train 40
python benchmarks/fit_targets.py results/fit --out benchmarks/results/fit_targets
