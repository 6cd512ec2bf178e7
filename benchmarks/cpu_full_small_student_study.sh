#!/bin/bash
# A phone-size student at cpu-full's budget (BENCHMARKS.md section 28).
# Sections 22-27: a resnet10t student (4.9 M parameters) at 64 px and 900 steps already scores
# within 0.01 of any teacher this CPU can train in budget, so KD has no room to pay. The
# question here: with the same teacher and the same KD recipe, does KD pay for a student that
# is much smaller than its teacher (the kind dermae exists to ship)?
# Only `distill.model` changes against section 27's lean run: the student, and with it (b),
# become STUDENT (default mobilenetv3_small_100, 1.5 M parameters, chosen before any run).
# The teacher stays the three seeds of (b)'s resnet10t recipe (b0 + b1 + b2, 14.8 M), copied
# from section 27's run; KD is cpu-full's own (alpha 0.5, T 2, live teacher on the student's
# view, no mixup), real images only, (b)'s balanced sampler, 900 steps, best-by-validation.
# Three seeds of (b) and of (d), paired on test by the ablation and by seed_study.py:
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_small_student_study.sh    # about 50 min, AMX CPU
# Patient KD (Beyer et al. 2022): (b) and (d) both at STEPS steps instead of 900, N_PATIENT
# seeds (default 1), same teacher, in a copy of the finished study's run ($RUN-steps-STEPS):
#   STEPS=2700 DERMAE_THREADS=2 bash benchmarks/cpu_full_small_student_study.sh patient
# Needs section 27's run ($FROM, made by cpu_full_fm_study.sh) for its data and teacher members.
# Reruns resume what is done.
set -euo pipefail
FROM=${FROM:-runs/cpu-full-fm}
STUDENT=${STUDENT:-mobilenetv3_small_100}
RUN=${RUN:-runs/cpu-full-student-$STUDENT}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
N=${N:-3}
[ -d "$FROM/baseline_seeds" ] || { echo "no teacher members in $FROM: run cpu_full_fm_study.sh first" >&2; exit 2; }
source "$(dirname "$0")/teacher_run.sh"
copy_teacher_run "$FROM" "$RUN"
COMMON=(-c "$CONFIG" --set baseline.loss=balanced_sampler --set data.include_synthetic=false
        --set "distill.teachers=[baseline]" --set "distill.model=$STUDENT"
        --set "ablate.variants=[b,d]")
SET=("${COMMON[@]}" --run-dir "$RUN" --set "ablate.seeds=$N")
folders() {  # run, recipe -> its seeds' folders as the run's ablation lists them, comma-separated
  "$PY" -c 'import json, sys
print(",".join(json.load(open(sys.argv[1]))["seeds"]["models"][sys.argv[2]]))' \
    "$1/ablate/ablation.json" "$2"
}
study() {  # run, output: seed_study.py's paired verdict over (b)'s and (d)'s seeds
  "$PY" benchmarks/seed_study.py "$1" --reference b \
    --recipe "b=$(folders "$1" b_simple_fix)" --recipe "d=$(folders "$1" d_dermae)" \
    --bar "teacher_ensemble=$1/teacher_ensemble/model" --out "$2"
}
uptime
if [ "${1:-}" = patient ]; then
  STEPS=${STEPS:?set STEPS to the student budget in steps}
  LONG=$RUN-steps-$STEPS
  copy_teacher_run "$RUN" "$LONG"  # (b) and (d) train anew at STEPS
  LONG_SET=("${COMMON[@]}" --run-dir "$LONG" --set "distill.train.max_steps=$STEPS"
            --set "ablate.seeds=${N_PATIENT:-1}")
  "$DERMAE" distill "${LONG_SET[@]}"
  "$DERMAE" ablate "${LONG_SET[@]}"
  uptime
  OUT=benchmarks/results/cpu_full_student_${STUDENT}_steps_${STEPS}
  cp "$LONG/ablate/ablation.json" "${OUT}_ablation.json"
  if [ "${N_PATIENT:-1}" -gt 1 ]; then study "$LONG" "${OUT}_study_${N_PATIENT}seeds.json"; fi
  exit 0
fi
"$DERMAE" distill "${SET[@]}"
"$DERMAE" ablate "${SET[@]}"
uptime
study "$RUN" "benchmarks/results/cpu_full_student_${STUDENT}_study_${N}seeds.json"
cp "$RUN/ablate/ablation.json" "benchmarks/results/cpu_full_student_${STUDENT}_ablation.json"
