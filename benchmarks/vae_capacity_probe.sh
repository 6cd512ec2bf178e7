#!/bin/bash
# Is the VAE the cap on the generator's class fidelity (issue 9, item 4)? cpu-full's VAE
# (f=8, 4x8x8 latents, 800 steps, L1 + KL) against variants that change one thing each: more
# latent channels, a smaller downsampling factor, a longer schedule, a perceptual term in the
# baseline's features at two weights, that term with square-root class balancing, and every
# class drawn equally often, with and without that term. Each
# VAE reconstructs the real validation images, and benchmarks/vae_class_probe.py asks the
# run's real-data judges how many of each class's reconstructions they still recognise: the
# most a UNet painting in that latent space can reach.
#   DERMAE_THREADS=2 bash benchmarks/vae_capacity_probe.sh   # ~45 min on an AMX CPU
#   NAMES="perc0.1" OUT=... bash benchmarks/vae_capacity_probe.sh   # some variants only
# Needs section 30's run ($FROM, made by generator_budget_probe.sh): its data, judges and VAE.
# The perceptual variants measure in baseline/model's features, so only the baseline_seeds
# judges are independent of them.
set -euo pipefail
FROM=${FROM:-runs/generator-budget}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
NAMES=${NAMES:-latent8 f4 steps2400 perc0.1 perc0.3 perc0.1-sqrt}
OUT=${OUT:-benchmarks/results/vae_capacity_probe.json}
[ -d "$FROM/synth/vae" ] || { echo "no VAE in $FROM: run generator_budget_probe.sh first" >&2; exit 2; }
source "$(dirname "$0")/teacher_run.sh"
SET=(-c configs/cpu-full.yaml --set baseline.loss=balanced_sampler --set data.include_synthetic=false)
declare -A VARIANTS=(
  [latent8]="vae.latent_channels=8"
  [f4]="vae.block_out_channels=[16,32,64]"
  [steps2400]="vae.train.max_steps=2400"
  [perc0.1]="vae.perceptual_weight=0.1"
  [perc0.3]="vae.perceptual_weight=0.3"
  [perc0.1-sqrt]="vae.perceptual_weight=0.1 vae.class_sampling_power=0.5"
  [balanced]="vae.class_sampling_power=1.0"
  [perc0.1-balanced]="vae.perceptual_weight=0.1 vae.class_sampling_power=1.0"
)
RUNS=("$FROM")
uptime
for name in $NAMES; do
  run="runs/vae-$name"
  copy_teacher_run "$FROM" "$run"
  sets=()
  for kv in ${VARIANTS[$name]}; do sets+=(--set "$kv"); done
  "$DERMAE" synth train-vae "${SET[@]}" --run-dir "$run" "${sets[@]}"
  RUNS+=("$run")
  uptime
done
"$PY" benchmarks/vae_class_probe.py "${RUNS[@]}" --out "$OUT"
uptime
