#!/bin/bash
# Does a longer-trained UNet, or a stronger guidance, paint minority lesions of their class?
# (issue 9, item 4: a real-trained classifier must recognise >= 50 % of each minority class's
# synthetic images; cpu-full's generator reached akiec 0.02, vasc 0.14, mel 0.45, bkl 0.47.)
# cpu-full's VAE (800 steps) and latent UNet, trained once at cpu-full's 3,000 steps and once
# at STEPS (default 9,000), everything else as configs/cpu-full.yaml. Each UNet is judged by
# benchmarks/generator_weights_probe.py at guidance 3 (cpu-full's), 5 and 8, with the run's
# real-data baseline (section 27's resnet10t, balanced sampler) as the judge.
#   DERMAE_THREADS=2 bash benchmarks/generator_budget_probe.sh   # about 45 min on an AMX CPU
# Needs section 27's run ($FROM, made by cpu_full_fm_study.sh) for its data and judge.
set -euo pipefail
FROM=${FROM:-runs/cpu-full-fm}
RUN=${RUN:-runs/generator-budget}
STEPS=${STEPS:-9000}
PER_CLASS=${PER_CLASS:-200}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
[ -d "$FROM/baseline" ] || { echo "no judge in $FROM: run cpu_full_fm_study.sh first" >&2; exit 2; }
source "$(dirname "$0")/teacher_run.sh"
SET=(-c configs/cpu-full.yaml --set baseline.loss=balanced_sampler --set data.include_synthetic=false)
probe() {  # run dir, output
  "$PY" benchmarks/generator_weights_probe.py "$1" --per-class "$PER_CLASS" \
    --guidance 3 5 8 --out "$2"
}
uptime
copy_teacher_run "$FROM" "$RUN"
"$DERMAE" synth train-vae "${SET[@]}" --run-dir "$RUN"
"$DERMAE" synth train "${SET[@]}" --run-dir "$RUN"
probe "$RUN" benchmarks/results/generator_budget_3000.json
uptime
LONG=$RUN-steps-$STEPS
if [ ! -d "$LONG" ]; then
  copy_teacher_run "$RUN" "$LONG"
  mkdir -p "$LONG/synth" && cp -r "$RUN/synth/vae" "$LONG/synth/" && cp "$RUN/stages/vae.json" "$LONG/stages/"
fi
"$DERMAE" synth train "${SET[@]}" --run-dir "$LONG" --set "ldm.train.max_steps=$STEPS"
probe "$LONG" "benchmarks/results/generator_budget_$STEPS.json"
uptime
