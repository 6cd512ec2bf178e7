#!/bin/bash
# Do recognisable synthetic lesions help the student? On a run of generator_vae_probe.sh (data,
# (b) and its two extra seeds, a VAE and a UNet), sample cpu-full's 1,500 images per minority
# class at guidance G, filter them (`dermae synth evaluate`: the baseline judges, its extra
# seeds report independent fidelity), then train ablation variant (c), (b)'s recipe on real +
# kept synthetic images (a share RATIO of them, distill.synthetic_ratio), and pair it with (b)
# on the test split. One seed: a signal, not a verdict (seeds move (b) by +-0.03 here,
# BENCHMARKS section 25). A second RATIO reuses the images and trains only (c).
#   RUN=runs/vae-perc0.1 G=5 DERMAE_THREADS=2 bash benchmarks/generator_student_probe.sh  # ~15 min
#   RATIO=0.25 RUN=runs/vae-perc0.1 G=5 DERMAE_THREADS=2 bash benchmarks/generator_student_probe.sh
# SEED=k (k > 0) trains both (b) and (c) at distill.train.seed k inside the ablation (seed 0's
# (b) is the run's baseline), so the pair shares a seed.
set -euo pipefail
RUN=${RUN:-runs/vae-perc0.1}
G=${G:-5}
RATIO=${RATIO:-1.0}
SEED=${SEED:-0}
DERMAE=${DERMAE:-.venv/bin/dermae}
SET=(-c configs/cpu-full.yaml --set baseline.loss=balanced_sampler --run-dir "$RUN"
     --set "sample.guidance=$G")
NAME=$(basename "$RUN")
uptime
"$DERMAE" synth sample "${SET[@]}" --set data.include_synthetic=false
"$DERMAE" synth evaluate "${SET[@]}" --set data.include_synthetic=false
cp "$RUN/synth/synth_quality.json" "benchmarks/results/generator_student_${NAME}_g${G}_quality.json"
"$DERMAE" ablate "${SET[@]}" --set "ablate.variants=[b,c]" --set ablate.seeds=1 \
  --set "distill.synthetic_ratio=$RATIO" $([ "$SEED" = 0 ] || echo --set "distill.train.seed=$SEED")
SUFFIX=$([ "$SEED" = 0 ] || echo "_s$SEED")
cp "$RUN/ablate/ablation.json" \
  "benchmarks/results/generator_student_${NAME}_g${G}_r${RATIO}${SUFFIX}_ablation.json"
uptime
