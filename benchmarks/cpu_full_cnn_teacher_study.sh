#!/bin/bash
# BENCHMARKS.md section 26: a teacher with CNN members at twice the student's resolution.
# Needs the finished cpu-full run (runs/cpu-full) and the five-seed study of section 25
# (runs/cpu-full-seeds-study, from `N=5 bash benchmarks/cpu_full_seed_study.sh`), whose (b)
# and (d) seeds are the comparison. Steps, each resumed when rerun:
#   1. two cnn_teacher members, resnet10t at SIZE px (default 128), STEPS steps (default 1800),
#      (b)'s balanced sampler, trained in a copy of the run (cpu_full_followups.sh cnn-teacher);
#   2. the teachers that could be built from the run's models, scored on val and test
#      (teacher_ensemble_probe.py): the config's teacher plus the members is distilled;
#   3. the student from that teacher at SEEDS seeds (default 3; `dermae ablate`, ablate.seeds);
#   4. benchmarks/seed_study.py: (b) at five seeds, the section 25 student at five, the new
#      student at SEEDS, and both teachers as bars, paired on test.
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_cnn_teacher_study.sh
# Section 26 ran SEEDS=2 (each student took 1,280 s, so three did not fit the session).
set -euo pipefail
SRC=${SRC:-runs/cpu-full}
STUDY=${STUDY:-runs/cpu-full-seeds-study}
SIZE=${SIZE:-128} STEPS=${STEPS:-1800} SEEDS=${SEEDS:-3}
NAME=h$SIZE
DST=$SRC-cnn-teacher-$NAME
PY=${PY:-.venv/bin/python}
OUT=benchmarks/results/$(basename "$SRC" | tr - _)_cnn_teacher_$NAME
FOLLOW="bash benchmarks/cpu_full_followups.sh cnn-teacher $SIZE $NAME"
export SRC STEPS
MEMBERS=2 UNTIL=cnn_teacher $FOLLOW
M="$DST/cnn_teacher"
[ -f "${OUT}_teachers.json" ] || "$PY" benchmarks/teacher_ensemble_probe.py "$DST" \
  --member vit="$SRC/teacher/model" --member b0="$SRC/baseline/model" \
  --member b1="$SRC/baseline_seeds/seed_plus_1/model" \
  --member b2="$SRC/baseline_seeds/seed_plus_2/model" \
  --member h1="$M/seed_plus_1/model" --member h2="$M/seed_plus_2/model" \
  --ensemble h1 --ensemble h2 --ensemble h1+h2 --ensemble b0+b1+b2 \
  --ensemble vit+b0+b1+b2 --ensemble b0+b1+b2+h1+h2 --ensemble vit+b0+h1+h2 \
  --ensemble vit+b0+b1+b2+h1+h2 --out "${OUT}_teachers.json"
MEMBERS=2 SEEDS=$SEEDS $FOLLOW
cp "$DST/ablate/ablation.json" "${OUT}_ablation.json"
folders() {  # ablation.json, recipe -> its seeds' folders, comma-separated
  "$PY" -c 'import json, sys
print(",".join(json.load(open(sys.argv[1]))["seeds"]["models"][sys.argv[2]]))' "$1" "$2"
}
"$PY" benchmarks/seed_study.py "$SRC" --reference b \
  --recipe "b=$(folders "$STUDY/ablate/ablation.json" b_simple_fix)" \
  --recipe "d_vit_3b=$(folders "$STUDY/ablate/ablation.json" d_dermae)" \
  --recipe "d_vit_3b_2h$SIZE=$(folders "$DST/ablate/ablation.json" d_dermae)" \
  --bar "teacher_vit_3b=$SRC/teacher_ensemble/model" \
  --bar "teacher_vit_3b_2h$SIZE=$DST/teacher_ensemble/model" \
  --out "${OUT}_seed_study.json"
