#!/bin/bash
# cpu-full's sampling and quality stages at several guidance scales, on one trained generator:
# per-class fidelity, FID/KID against real train images, near-copies and what the classifier
# filter accepts, as `dermae synth evaluate` writes them (BENCHMARKS.md section 30).
#   RUN=runs/generator-budget GUIDANCE="3 5" DERMAE_THREADS=2 \
#     bash benchmarks/generator_guidance_quality.sh          # about 4 min per scale, AMX CPU
# RUN is a run made by generator_budget_probe.sh (data, judge, VAE and UNet). Each scale
# regenerates the run's synthetic images; the quality file is copied to
# benchmarks/results/generator_guidance_<G>_<run name>_quality.json.
set -euo pipefail
RUN=${RUN:-runs/generator-budget}
GUIDANCE=${GUIDANCE:-3 5}
DERMAE=${DERMAE:-.venv/bin/dermae}
SET=(-c configs/cpu-full.yaml --set baseline.loss=balanced_sampler --set data.include_synthetic=false
     --run-dir "$RUN")
uptime
for G in $GUIDANCE; do
  "$DERMAE" synth sample "${SET[@]}" --set "sample.guidance=$G"
  "$DERMAE" synth evaluate "${SET[@]}" --set "sample.guidance=$G"
  cp "$RUN/synth/synth_quality.json" \
    "benchmarks/results/generator_guidance_${G}_$(basename "$RUN")_quality.json"
done
uptime
