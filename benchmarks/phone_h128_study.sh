#!/bin/bash
# Patient KD of the phone student from a teacher that also sees 128 px, on a finished
# `dermae run -c configs/cpu-phone.yaml` run (BENCHMARKS.md sections 26, 29, 33, 34). Only the
# teacher changes against the run's (d): its three resnet10t seeds plus two resnet10t
# `cnn_teacher` members at 128 px, 1,800 steps (section 26's, 0.673 and 0.685 alone on test);
# the student keeps 64 px, 2,700 steps, alpha 0.5, T 2 and the live teacher.
#   1. the two members, in the run (`dermae run --until cnn_teacher`, resumable per epoch);
#   2. (d) with them at SEEDS seeds (default 3), into <run>/h128/, paired on test with the
#      run's (b) and (d) seeds (student_variant_study.py).
#   DERMAE_THREADS=2 bash benchmarks/phone_h128_study.sh
set -euo pipefail
RUN=${RUN:-runs/cpu-phone}
CONFIG=${CONFIG:-configs/cpu-phone.yaml}
SEEDS=${SEEDS:-3}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
[ -f "$RUN/ablate/ablation.json" ] || { echo "no $RUN/ablate: run 'dermae run -c $CONFIG' first" >&2; exit 2; }
TEACHER=(--set cnn_teacher.members=2 --set cnn_teacher.image_size=128
  --set cnn_teacher.train.max_steps=1800 --set cnn_teacher.train.lr=0.003
  --set cnn_teacher.train.warmup_steps=50 --set cnn_teacher.train.eval_every=100
  --set cnn_teacher.train.mixed_precision=auto --set 'distill.teachers=[baseline,cnn_teacher]')
uptime
# `dermae run` records its config in the run; keep the one that made the run's (b) and (d).
cp "$RUN/config.yaml" "$RUN/config.before_h128.yaml"
"$DERMAE" run -c "$CONFIG" --run-dir "$RUN" --until cnn_teacher "${TEACHER[@]}"
mv "$RUN/config.before_h128.yaml" "$RUN/config.yaml"
uptime
PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/student_variant_study.py "$RUN" -c "$CONFIG" \
  --name h128 "${TEACHER[@]}" --seeds "$SEEDS" \
  --out benchmarks/results/phone_h128_teacher_study.json
uptime
