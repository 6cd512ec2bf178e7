#!/bin/bash
# Three seeds of (b) and of the DerMAE student, with and without mixup, on one finished
# cpu-full run (at least `dermae run -c configs/cpu-full.yaml --until distill`): BENCHMARKS.md
# section 25. The teacher stays the run's (ViT + (b) + its two extra seeds); (b)'s seeds 0-2
# are the run's baseline and baseline_seeds members; each arm's ablation (ablate.seeds=3)
# trains the student's seeds 1 and 2. seed_study.py then scores every model on validation
# (where the mixup choice is made) and test.
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh
# About 35 min on an AMX CPU: five students of 900 steps with a live 4-member teacher.
set -euo pipefail
SRC=${SRC:-runs/cpu-full}
PY=${PY:-.venv/bin/python}
FOLLOW=benchmarks/cpu_full_followups.sh
NOMIX=$SRC-seeds-3
MIX=$SRC-kd-mixup-0.4-seeds-3
[ -f "$NOMIX/ablate/ablation.json" ] || SRC=$SRC bash "$FOLLOW" seeds 3 3
[ -f "$MIX/ablate/ablation.json" ] || SEEDS=3 SRC=$SRC bash "$FOLLOW" kd-mixup 0.4 0.4-seeds-3
seeds() { echo "$1/student/model,$2/ablate/seeds/d_seed_plus_1/model,$2/ablate/seeds/d_seed_plus_2/model"; }
"$PY" benchmarks/seed_study.py "$SRC" --reference b \
  --recipe "b=$SRC/baseline/model,$SRC/baseline_seeds/seed_plus_1/model,$SRC/baseline_seeds/seed_plus_2/model" \
  --recipe "d_mixup_0=$(seeds "$SRC" "$NOMIX")" \
  --recipe "d_mixup_0.4=$(seeds "$MIX" "$MIX")" \
  --out "benchmarks/results/$(basename "$SRC")_seed_study.json"
