#!/bin/bash
# A teacher member that sees more pixels: one resnet10t `cnn_teacher` member per SIZE (px), with
# (b)'s recipe and budget (balanced sampler, STEPS steps of 64, best-by-validation, real images;
# only the resolution changes), trained in a copy of SRC that keeps its data, (b) and (b)'s
# seeds, then scored alone and with the three (b) seeds (teacher_ensemble_probe.py).
#   SRC=runs/cpu-full-fm SIZES="96 128" STEPS=900 DERMAE_THREADS=2 \
#     bash benchmarks/teacher_resolution_probe.sh
# MEMBERS=2 trains two members per size (seeds +1 and +2, named h<SIZE>_1 and h<SIZE>_2).
set -euo pipefail
source "$(dirname "$0")/probe_common.sh"
SRC=${SRC:-runs/cpu-full-fm}
SIZES=${SIZES:-96 128}
STEPS=${STEPS:-900}
MEMBERS=${MEMBERS:-1}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
seed_members "$SRC"
for SIZE in $SIZES; do
  DST=runs/teacher-h$SIZE-$STEPS
  if [ ! -d "$DST" ]; then
    copy_prepared "$SRC" "$DST"
    cp -r "$SRC/baseline" "$SRC/baseline_seeds" "$DST/"
    cp "$SRC/stages/baseline.json" "$SRC/stages/baseline_seeds.json" "$DST/stages/"
  fi
  uptime
  "$DERMAE" run -c configs/cpu-full.yaml --run-dir "$DST" --until cnn_teacher \
    --set baseline.loss=balanced_sampler --set data.include_synthetic=false \
    --set "cnn_teacher.members=$MEMBERS" --set "cnn_teacher.image_size=$SIZE" \
    --set "cnn_teacher.train.max_steps=$STEPS" --set cnn_teacher.train.lr=0.003 \
    --set cnn_teacher.train.warmup_steps=50 --set cnn_teacher.train.eval_every=100 \
    --set cnn_teacher.train.mixed_precision=auto \
    --set 'distill.teachers=[baseline,cnn_teacher]' --set 'ablate.variants=[b,d]'
  uptime
  for M in $(seq 1 "$MEMBERS"); do
    NAME=h$SIZE
    [ "$MEMBERS" -eq 1 ] || NAME=h${SIZE}_$M
    add_member "$NAME" "$DST/cnn_teacher/seed_plus_$M/model"
  done
done
score_members "$SRC" "benchmarks/results/teacher_resolution_probe_$STEPS.json"
