#!/bin/bash
# Decision rules fitted on validation (dermae.classify.decision), applied to every saved student
# of a cpu-full-phone run that has all six variants and five seeds of (b), (c) and (d):
#   bash benchmarks/decision_rule_study.sh runs/cpu-full-phone benchmarks/results
# writes <out>/cpu_full_phone_decision_{argmax,prior,bias}.json (BENCHMARKS.md section 37).
# No training: each model scores validation and test once per rule.
set -euo pipefail
R=${1:?run dir}
OUT=${2:?output folder}
seeds() { # first folder, then the ablation's four extra seeds of variant $2
  echo -n "$1"
  for i in 1 2 3 4; do echo -n ",$R/ablate/seeds/${2}_seed_plus_$i/model"; done
}
for rule in argmax prior bias; do
  uptime
  python benchmarks/seed_study.py "$R" --reference b --decision "$rule" \
    --recipe "a=$R/ablate/a_real_ce/model" \
    --recipe "b=$(seeds "$R/ablate/b_simple_fix/model" b)" \
    --recipe "c=$(seeds "$R/ablate/c_real_synth/model" c)" \
    --recipe "d=$(seeds "$R/student/model" d)" \
    --recipe "e=$R/ablate/e_no_mae/model" \
    --recipe "f=$R/ablate/f_no_synth_pretrain/model" \
    --bar "teacher_ensemble=$R/teacher_ensemble/model" \
    --out "$OUT/cpu_full_phone_decision_$rule.json"
  uptime
done
