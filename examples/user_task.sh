#!/usr/bin/env bash
# A task of your own, end to end through the CLI alone: any JSONL file of {"input", "output"} lines
# is a task. Here the file is made from one function-vector list (English -> German words) to
# stand in for a user's data; `adainfer eval` splits it in two halves by a fixed seed
# (demonstrations and classifier training / evaluation), collects zero- and 5-shot traces on the
# embedded Gemma 3 270M and writes the same tables and figures as for the built-in tasks. The
# traces are then exported to results/traces/user-task-english-german and the committed tables are
# built from them (with the Gemma cost profile of examples/paper_tables.sh).
# Run from the repository root; about 5 minutes on 2 cores.
set -euo pipefail
data=${ADAINFER_DATA:-../shared/data}
mkdir -p runs/user
python -c 'import json, sys; print("".join(json.dumps(row) + "\n" for row in json.load(open(sys.argv[1]))), end="")' \
  "$data/function_vectors/abstractive/english-german.json" > runs/user/english-german.jsonl
adainfer eval --tasks runs/user/english-german.jsonl --shots 0,5 --limit 100 --train-limit 50 --out runs/report-user
traces=results/traces/user-task-english-german
adainfer export-traces "$(ls -d runs/cache/Gemma3ForCausalLM-* | head -1)" --out "$traces" --tasks english-german
adainfer report "$traces" --out results/user-task-english-german --cost-profile results/traces/gemma3-270m/cost_profile.json
