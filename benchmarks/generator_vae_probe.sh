#!/bin/bash
# Does a VAE whose reconstructions keep their class let the UNet paint recognisable lesions
# (issue 9, item 4)? For each run of vae_capacity_probe.sh named in VAES, train cpu-full's
# latent UNet (3,000 steps) on that VAE and judge 200 images per minority class at guidance 3
# and 5 with the baseline and, independently, with the baseline's seed + 1 (which neither
# filters nor gave a perceptual VAE its features).
#   VAES="runs/vae-perc0.1" DERMAE_THREADS=2 bash benchmarks/generator_vae_probe.sh  # ~15 min each
set -euo pipefail
VAES=${VAES:-runs/vae-perc0.1}
PER_CLASS=${PER_CLASS:-200}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
SET=(-c configs/cpu-full.yaml --set baseline.loss=balanced_sampler --set data.include_synthetic=false)
uptime
for run in $VAES; do
  [ -d "$run/synth/vae" ] || { echo "no VAE in $run: run vae_capacity_probe.sh first" >&2; exit 2; }
  # The UNet stage reads the VAE as it was made (its stage mark), whatever this config says.
  "$DERMAE" synth train "${SET[@]}" --run-dir "$run"
  "$PY" benchmarks/generator_weights_probe.py "$run" --per-class "$PER_CLASS" --guidance 3 5 \
    --weights ema --second-judge "$run/baseline_seeds/seed_plus_1/model" \
    --out "benchmarks/results/generator_on_$(basename "$run").json"
  uptime
done
