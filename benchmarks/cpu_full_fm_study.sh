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
# Reruns resume what is done.
set -euo pipefail
RUN=${RUN:-runs/cpu-full-fm}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
N=${N:-3}
KL=$RUN-kl
SET=(-c "$CONFIG" --set baseline.loss=balanced_sampler --set data.include_synthetic=false
     --set "distill.teachers=[baseline]" --set distill.mixup=0.4 --set "ablate.seeds=$N")
uptime
"$DERMAE" run "${SET[@]}" --run-dir "$RUN" --until baseline_seeds
"$DERMAE" distill "${SET[@]}" --run-dir "$RUN"
"$DERMAE" ablate "${SET[@]}" --run-dir "$RUN" --set "ablate.variants=[b,d,g]"
uptime
if [ ! -d "$KL" ]; then  # the same data, (b) and teacher members; only the KD loss changes
  mkdir -p "$KL/stages"
  cp -r "$RUN/config.yaml" "$RUN/data" "$RUN/baseline" "$RUN/baseline_seeds" "$KL/"
  for m in prepare baseline baseline_seeds; do cp "$RUN/stages/$m.json" "$KL/stages/"; done
fi
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
