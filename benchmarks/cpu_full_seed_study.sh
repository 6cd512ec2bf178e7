#!/bin/bash
# Several seeds of (b) and of the DerMAE student, with and without mixup, on one finished
# cpu-full run (at least `dermae run -c configs/cpu-full.yaml --until distill`): BENCHMARKS.md
# section 25. The teacher stays the run's (ViT + (b) + its two extra seeds); only the
# students' seeds change. (b)'s seeds 0-2 are the run's baseline and baseline_seeds members.
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh          # seeds 0-2
#   EXTRA_SEEDS="3 4" DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh  # then 0-4
# Each student is about 7 min on an AMX CPU (900 steps, live 4-member teacher).
set -euo pipefail
SRC=${SRC:-runs/cpu-full}
MIXUPS=${MIXUPS:-"0 0.4"}
EXTRA_SEEDS=${EXTRA_SEEDS:-}
PY=${PY:-.venv/bin/python}
FOLLOW=benchmarks/cpu_full_followups.sh
student() {  # seed mixup -> the student's folder (seed 0 without mixup is the run's own)
  if [ "$1" = 0 ] && [ "$2" = 0 ]; then echo "$SRC/student/model"
  else echo "$SRC-kd-seed-mixup-$2-seed-$1/student/model"; fi
}
baseline() {  # seed -> (b)'s folder at that seed
  case "$1" in 0) echo "$SRC/baseline/model" ;;
    1|2) echo "$SRC/baseline_seeds/seed_plus_$1/model" ;;
    *) echo "$SRC-b-seed-$1/baseline/model" ;; esac
}
SEEDS="0 1 2 $EXTRA_SEEDS"
for s in $EXTRA_SEEDS; do
  [ -f "$(baseline "$s")/config.json" ] || SRC=$SRC bash "$FOLLOW" b-seed "$s" "$s"
done
for m in $MIXUPS; do
  for s in $SEEDS; do
    [ -f "$(student "$s" "$m")/config.json" ] || \
      MIXUP=$m SRC=$SRC bash "$FOLLOW" kd-seed "$s" "mixup-$m-seed-$s"
  done
done
join() { local IFS=,; echo "$*"; }
ARGS=(--recipe "b=$(join $(for s in $SEEDS; do baseline "$s"; done))")
for m in $MIXUPS; do
  ARGS+=(--recipe "d_mixup_$m=$(join $(for s in $SEEDS; do student "$s" "$m"; done))")
done
N=$(echo $SEEDS | wc -w)
"$PY" benchmarks/seed_study.py "$SRC" --reference b "${ARGS[@]}" \
  --out "benchmarks/results/$(basename "$SRC")_seed_study_${N}seeds.json"
