#!/bin/bash
# Patient KD of the phone student from a teacher that sees 128 px (the next step after
# BENCHMARKS.md sections 26, 29 and 33). Section 29's (d) learned from three 64-px resnet10t
# seeds (test 0.660, +0.069 over the phone (b)) and gained +0.039; section 26's two 128-px
# resnet10t members at 1,800 steps lifted that teacher to 0.698. Here only the teacher changes
# against section 29's (d): the three (b) seeds plus those two members; the student keeps 64 px,
# 2,700 steps, alpha 0.5, T 2, the live teacher (section 33: cached views lose the gain).
#   1. two resnet10t cnn_teacher members at 128 px, 1,800 steps (teacher_resolution_probe.sh,
#      MEMBERS=2; about 56 min on the AMX host, resumed per epoch when cut short);
#   2. (d) at SEEDS seeds (default 3) in section 29's run, paired with its (b) and (d) seeds
#      (student_variant_study.py; about 1 h a seed estimated: the teacher's two 128-px
#      forwards per step).
#   DERMAE_THREADS=2 bash benchmarks/phone_h128_study.sh
set -euo pipefail
SRC=${SRC:-runs/cpu-full-fm}
RUN=${RUN:-runs/cpu-full-student-mobilenetv3_small_100-steps-2700}
SEEDS=${SEEDS:-3}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
[ -f "$RUN/ablate/ablation.json" ] || { echo "no $RUN: run N_PATIENT=3 STEPS=2700 bash benchmarks/cpu_full_small_student_study.sh patient first" >&2; exit 2; }
SRC=$SRC SIZES=128 STEPS=1800 MEMBERS=2 DERMAE=$DERMAE bash "$(dirname "$0")/teacher_resolution_probe.sh"
H=../teacher-h128-1800/cnn_teacher  # relative to the run directory, as distill.teachers reads it
uptime
PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/student_variant_study.py "$RUN" \
  -c configs/cpu-full.yaml --set baseline.loss=balanced_sampler \
  --set data.include_synthetic=false --set distill.model=mobilenetv3_small_100 \
  --set 'ablate.variants=[b,d]' --set distill.train.max_steps=2700 \
  --name h128 --set "distill.teachers=[baseline,$H/seed_plus_1,$H/seed_plus_2]" \
  --seeds "$SEEDS" --out benchmarks/results/phone_h128_teacher_study.json
uptime
