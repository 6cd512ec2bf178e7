#!/bin/bash
# Function matching against its control, at cpu-full's student budget (BENCHMARKS.md section 27).
# Is the gain of the mixup students of section 25 the teacher's, or mixup's alone?
# A lean run: real images only (no generator, no MAE), the teacher is three seeds of (b)
# (section 22 found them as good a teacher as ViT + the three), (b) is the balanced sampler
# that cpu-full's `auto` chooses. Three seeds of each recipe, paired on test:
#   (b)        the simple fix, seeds 0-2 (the baseline and its two baseline_seeds members)
#   (g)        (b) + mixup 0.4, no teacher                          - the control
#   (d) FM     (b) + KD (alpha 0.5, T 2) from the ensemble, mixup 0.4 - section 25's recipe
#   (d) FM-KL  as (d) FM with alpha 1, T 1: the teacher's KL alone (Beyer et al. 2022)
# seed_study.py scores every model on validation (where a recipe would be chosen) and on test.
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_fm_study.sh    # about 65 min on an AMX CPU
# Patient: the same teacher, every student recipe ((b), (g), (d) FM) at STEPS steps instead of
# 900, N seeds (default 1), in a copy of the finished study's run ($RUN-steps-STEPS):
#   STEPS=2700 N=1 DERMAE_THREADS=2 bash benchmarks/cpu_full_fm_study.sh patient
# Reruns resume what is done.
set -euo pipefail
RUN=${RUN:-runs/cpu-full-fm}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
N=${N:-$([ "${1:-}" = patient ] && echo 1 || echo 3)}
KL=$RUN-kl
SET=(-c "$CONFIG" --set baseline.loss=balanced_sampler --set data.include_synthetic=false
     --set "distill.teachers=[baseline]" --set distill.mixup=0.4 --set "ablate.seeds=$N")
copy_teacher_run() {  # the same data, (b) and teacher members in a new run dir
  if [ ! -d "$1" ]; then
    mkdir -p "$1/stages"
    cp -r "$RUN/config.yaml" "$RUN/data" "$RUN/baseline" "$RUN/baseline_seeds" "$1/"
    for m in prepare baseline baseline_seeds; do cp "$RUN/stages/$m.json" "$1/stages/"; done
  fi
}
uptime
if [ "${1:-}" = patient ]; then
  STEPS=${STEPS:?set STEPS to the student budget in steps}
  LONG=$RUN-steps-$STEPS
  copy_teacher_run "$LONG"
  # (b) no longer equals the baseline's 900-step recipe, so the ablation trains it at STEPS.
  LONG_SET=("${SET[@]}" --run-dir "$LONG" --set "distill.train.max_steps=$STEPS")
  "$DERMAE" distill "${LONG_SET[@]}"
  "$DERMAE" ablate "${LONG_SET[@]}" --set "ablate.variants=[b,d,g]"
  uptime
  exit 0
fi
"$DERMAE" run "${SET[@]}" --run-dir "$RUN" --until baseline_seeds
"$DERMAE" distill "${SET[@]}" --run-dir "$RUN"
"$DERMAE" ablate "${SET[@]}" --run-dir "$RUN" --set "ablate.variants=[b,d,g]"
uptime
copy_teacher_run "$KL"  # only the KD loss changes
KL_SET=("${SET[@]}" --run-dir "$KL" --set distill.alpha=1.0 --set distill.temperature=1.0)
"$DERMAE" distill "${KL_SET[@]}"
"$DERMAE" ablate "${KL_SET[@]}" --set "ablate.variants=[b,d]"
uptime
folders() {  # run dir, recipe -> its seeds' folders as its ablation lists them, comma-separated
  "$PY" -c 'import json, sys
print(",".join(json.load(open(sys.argv[1]))["seeds"]["models"][sys.argv[2]]))' \
    "$1/ablate/ablation.json" "$2"
}
"$PY" benchmarks/seed_study.py "$RUN" --reference b \
  --recipe "b=$(folders "$RUN" b_simple_fix)" \
  --recipe "g_mixup_no_kd=$(folders "$RUN" g_mixup_no_kd)" \
  --recipe "d_fm=$(folders "$RUN" d_dermae)" \
  --recipe "d_fm_kl=$(folders "$KL" d_dermae)" \
  --bar "teacher_ensemble=$RUN/teacher_ensemble/model" \
  --out "benchmarks/results/cpu_full_fm_study_${N}seeds.json"
