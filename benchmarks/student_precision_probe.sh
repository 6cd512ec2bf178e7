#!/bin/bash
# Section 29's patient (d) step in three precisions (BENCHMARKS.md section 29). The step-time
# breakdown found the mobilenetv3_small student faster in fp32 and its resnet10t teacher faster
# in bf16; this times whole (d) steps in the real loop. Short runs of the same (d) (section 28's
# run: data, the three-member teacher, KD recipe), STEPS steps each, validated once at the end:
#   same:  as measured in section 29 (student and teacher under `auto`: bf16 on an AMX CPU)
#   fp32:  distill.train.mixed_precision=no (student and teacher in fp32)
#   split: the student in fp32, the teacher in bf16 (distill.teacher_precision=auto)
#   STEPS=300 DERMAE_THREADS=2 bash benchmarks/student_precision_probe.sh    # about 10 min
# VARIANTS picks some of them; EVAL_EVERY validates every so many steps (best-by-validation, as
# section 29's students; default: once, at the end).
# Writes benchmarks/results/student_precision_probe.json (train seconds per step, load).
set -euo pipefail
FROM=${FROM:-runs/cpu-full-student-mobilenetv3_small_100}
STEPS=${STEPS:-300}
EVAL_EVERY=${EVAL_EVERY:-$STEPS}
VARIANTS=${VARIANTS:-same fp32 split}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
OUT=${OUT:-benchmarks/results/student_precision_probe.json}
[ -d "$FROM/baseline_seeds" ] || { echo "no $FROM: run cpu_full_small_student_study.sh first" >&2; exit 2; }
declare -A SETTINGS=(
  [same]=""
  [fp32]="distill.train.mixed_precision=no"
  [split]="distill.train.mixed_precision=no distill.teacher_precision=auto"
)
source "$(dirname "$0")/teacher_run.sh"
BEFORE=$(uptime)
for name in $VARIANTS; do
  RUN=$FROM-precision-$name
  rm -rf "$RUN" && copy_teacher_run "$FROM" "$RUN"  # a fresh copy: the student trains anew
  EXTRA=()
  for kv in ${SETTINGS[$name]}; do EXTRA+=(--set "$kv"); done
  "$DERMAE" distill -c "$CONFIG" --run-dir "$RUN" --set baseline.loss=balanced_sampler \
    --set data.include_synthetic=false --set "distill.teachers=[baseline]" \
    --set distill.model=mobilenetv3_small_100 --set "distill.train.max_steps=$STEPS" \
    --set "distill.train.eval_every=$EVAL_EVERY" ${EXTRA[@]+"${EXTRA[@]}"}
done
"$PY" - "$FROM" "$STEPS" "$OUT" "$BEFORE" "$(uptime)" "$VARIANTS" "$EVAL_EVERY" <<'PY'
import json, sys
from pathlib import Path
source, steps, out, before, after, variants, eval_every = sys.argv[1:]
runs = {}
for name in variants.split():
    stats = json.loads(Path(f"{source}-precision-{name}/student/model_stats.json").read_text())
    runs[name] = {"train_seconds": stats["train_seconds"], "steps": stats["steps"],
                  "seconds_per_step": round(stats["train_seconds"] / stats["steps"], 4)}
    print(f"{name:6s} {runs[name]['seconds_per_step']:.3f} s/step")
command = (f"VARIANTS='{variants}' STEPS={steps} EVAL_EVERY={eval_every} OUT={out} "
           "DERMAE_THREADS=2 bash benchmarks/student_precision_probe.sh")
record = {"command": command,
          "source_run": source, "uptime_before": before, "uptime_after": after, "runs": runs}
Path(out).write_text(json.dumps(record, indent=2) + "\n")
PY
