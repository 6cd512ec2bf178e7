#!/bin/bash
# The follow-ups of BENCHMARKS.md sections 15 and 16, on a finished cpu-full run
# (`dermae run -c configs/cpu-full.yaml`, run_dir runs/cpu-full). Each works in a copy of
# the run directory holding only what it reuses, so the original run is never touched.
# Right after a long run `threads: auto` sees the load and picks 1 thread; the measured
# follow-ups ran with DERMAE_THREADS=2.
#   bash benchmarks/cpu_full_followups.sh kd 0.0 no-synthetic   # section 15, row 2
#   bash benchmarks/cpu_full_followups.sh kd 1.0 sampler-fix    # section 15, row 3
#   bash benchmarks/cpu_full_followups.sh ldm 0.5 sqrt          # section 16
#   bash benchmarks/cpu_full_followups.sh patient 1800 1800     # (b) and (d) at 1,800 steps
#   bash benchmarks/cpu_full_followups.sh seed 1 1               # (b) and (d) reseeded, both
#                                         checkpoint rules scored (benchmarks/selection_probe.py)
#   EXTRA=runs/demo-seed-1/selection_probe/b_last_model \
#     bash benchmarks/cpu_full_followups.sh kd-extra 0 seed0     # the student (seed VALUE) from
#                                         distill.teachers plus the classifier folder EXTRA
#   bash benchmarks/cpu_full_followups.sh kd-seeds 0 0           # the student from an ensemble
#                                         with VALUE of the run's extra seeds of (b)
#   bash benchmarks/cpu_full_followups.sh kd-mixup 0.4 0.4       # the student with mixup VALUE
#                                         (distill.mixup), the run's teacher and (b)
#   bash benchmarks/cpu_full_followups.sh seeds 3 3              # (b) and (d) at VALUE seeds
#                                         (ablate.seeds), the run's teacher
#   SEEDS=3 bash benchmarks/cpu_full_followups.sh kd-mixup 0.4 0.4-seeds-3  # kd-mixup, and the
#                                         ablation at SEEDS seeds (default 1)
#   MEMBERS=2 STEPS=1800 bash benchmarks/cpu_full_followups.sh cnn-teacher 128 h128  # two
#                                         cnn_teacher members at VALUE px (resnet10t, (b)'s
#                                         loss, STEPS steps); UNTIL=cnn_teacher stops there;
#                                         else the student from TEACHERS (default
#                                         [teacher,baseline,cnn_teacher]) and the ablation at
#                                         SEEDS seeds. Reruns resume what is done.
# The same on another finished run: SRC names its folder, CONFIG its config, e.g.
#   SRC=runs/demo CONFIG=configs/demo.yaml bash benchmarks/cpu_full_followups.sh ldm-steps 3200 3200
set -euo pipefail
KIND=${1:-} VALUE=${2:-} NAME=${3:-}
KINDS="kd|ldm|ldm-steps|patient|seed|kd-extra|kd-seeds|kd-mixup|seeds|cnn-teacher"
case "$KIND" in kd|ldm|ldm-steps|patient|seed|kd-extra|kd-seeds|kd-mixup|seeds|cnn-teacher) ;;
  *) echo "usage: $0 $KINDS VALUE NAME" >&2; exit 2 ;; esac
SRC=${SRC:-runs/cpu-full}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
DST=$SRC-$KIND-$NAME
marks() { for m in "$@"; do cp "$SRC/stages/$m.json" "$DST/stages/"; done; }
if [ "$KIND" = cnn-teacher ] && [ -d "$DST" ]; then
  echo "resuming in $DST"  # its members and students resume where they stopped
else
  rm -rf "$DST" && mkdir -p "$DST/stages"
  cp "$SRC/config.yaml" "$DST/"
  if [ "$KIND" = cnn-teacher ]; then
    cp -r "$SRC/data" "$SRC/baseline" "$SRC/baseline_seeds" "$SRC/teacher" "$DST/"
    marks prepare baseline baseline_seeds vae ldm sample synth_quality pretrain finetune
  fi
fi
uptime
if [ "$KIND" = cnn-teacher ]; then
  # Same data, (b), its extra seeds and the ViT teacher; cnn_teacher members at VALUE px join
  # the teacher, the student keeps (b)'s size and budget, then (b) and (d) are paired.
  SET=(-c "$CONFIG" --run-dir "$DST" --set "cnn_teacher.members=${MEMBERS:-2}"
       --set "cnn_teacher.image_size=$VALUE" --set "cnn_teacher.train.max_steps=${STEPS:-1800}"
       --set cnn_teacher.train.lr=0.003 --set cnn_teacher.train.warmup_steps=50
       --set cnn_teacher.train.eval_every=100 --set cnn_teacher.train.mixed_precision=auto
       --set "distill.teachers=${TEACHERS:-[teacher,baseline,cnn_teacher]}"
       --set "ablate.variants=[b,d]" --set "ablate.seeds=${SEEDS:-1}")
  "$DERMAE" run "${SET[@]}" --until cnn_teacher
  if [ "${UNTIL:-}" != cnn_teacher ]; then
    "$DERMAE" distill "${SET[@]}"
    "$DERMAE" ablate "${SET[@]}"
  fi
elif [ "$KIND" = kd ]; then
  # Same (b), teacher and filtered synthetic images; only the student is retrained.
  cp -r "$SRC/data" "$SRC/baseline" "$SRC/teacher" "$DST/"
  marks prepare baseline vae ldm sample synth_quality pretrain finetune
  SET=(-c "$CONFIG" --run-dir "$DST" --set "distill.synthetic_ratio=$VALUE"
       --set "ablate.variants=[b,d]")
  "$DERMAE" distill "${SET[@]}"
  "$DERMAE" ablate "${SET[@]}"
elif [ "$KIND" = ldm ] || [ "$KIND" = ldm-steps ]; then
  # Same VAE, latent cache and judge; the UNet, sampling and quality checks rerun:
  # ldm VALUE sets the class sampling power, ldm-steps VALUE the UNet's steps.
  mkdir -p "$DST/synth"
  cp -r "$SRC/data" "$SRC/baseline" "$DST/" && rm -rf "$DST/data/synthetic"
  cp -r "$SRC/synth/vae" "$SRC/synth/latents_train.safetensors" "$DST/synth/"
  marks prepare baseline vae
  if [ "$KIND" = ldm ]; then
    SET=(-c "$CONFIG" --run-dir "$DST" --set "ldm.class_sampling_power=$VALUE")
  else
    SET=(-c "$CONFIG" --run-dir "$DST" --set "ldm.train.max_steps=$VALUE"
         --set "ldm.train.eval_every=$VALUE")
  fi
  "$DERMAE" synth train "${SET[@]}"
  "$DERMAE" synth sample "${SET[@]}"
  "$DERMAE" synth evaluate "${SET[@]}"
elif [ "$KIND" = patient ]; then
  # Same teacher and filtered synthetic images; (b) and the student both train VALUE steps
  # (patient KD), so the pair stays like for like. The retrained (b) is also the ensemble's
  # CNN member, as in the recipe.
  cp -r "$SRC/data" "$SRC/teacher" "$DST/"
  marks prepare vae ldm sample synth_quality pretrain finetune
  SET=(-c "$CONFIG" --run-dir "$DST" --set "baseline.train.max_steps=$VALUE"
       --set "distill.train.max_steps=$VALUE" --set "ablate.variants=[b,d]")
  "$DERMAE" train "${SET[@]}"
  "$DERMAE" distill "${SET[@]}"
  "$DERMAE" ablate "${SET[@]}"
elif [ "$KIND" = seed ]; then
  # Same teacher and filtered synthetic images; (b) and the student train with seed VALUE
  # (weights, data order, augmentation), and each is scored at its best-by-validation
  # checkpoint and at its last step. The reseeded (b) is also the ensemble's CNN member.
  cp -r "$SRC/data" "$SRC/teacher" "$DST/"
  marks prepare vae ldm sample synth_quality pretrain finetune
  SET=(-c "$CONFIG" --run-dir "$DST" --set "baseline.train.seed=$VALUE"
       --set "distill.train.seed=$VALUE")
  "$DERMAE" train "${SET[@]}"
  "$DERMAE" distill "${SET[@]}"
  "$(dirname "$DERMAE")/python" benchmarks/selection_probe.py "$DST" "${SET[@]:0:2}" \
    --set "baseline.train.seed=$VALUE" --set "distill.train.seed=$VALUE" \
    --out "benchmarks/results/$(basename "$SRC")_selection_seed$VALUE.json"
elif [ "$KIND" = kd-extra ]; then
  # SRC's data, ViT teacher and (b); the student (seed VALUE) learns from the ensemble plus one
  # more classifier, EXTRA, then (b) and it are paired. A (b) that the selection probe scored
  # at its last step is used at that step (the demo's `select: last`).
  : "${EXTRA:?set EXTRA to the folder of the extra teacher classifier}"
  cp -r "$SRC/data" "$SRC/teacher" "$SRC/baseline" "$DST/"
  if [ -d "$SRC/selection_probe/b_last_model" ]; then
    rm -rf "$DST/baseline/model" && cp -r "$SRC/selection_probe/b_last_model" "$DST/baseline/model"
  fi
  marks prepare baseline vae ldm sample synth_quality pretrain finetune
  SET=(-c "$CONFIG" --run-dir "$DST" --set "distill.teachers=[teacher,baseline,$EXTRA]"
       --set "distill.train.seed=$VALUE" --set "baseline.train.seed=$VALUE"
       --set "ablate.variants=[b,d]")
  "$DERMAE" distill "${SET[@]}"
  "$DERMAE" ablate "${SET[@]}"
elif [ "$KIND" = kd-seeds ] || [ "$KIND" = kd-mixup ]; then
  # Same data, (b), ViT teacher and extra seeds of (b); the student learns from the ensemble
  # holding VALUE of those seeds (kd-seeds: distill.baseline_seeds=VALUE) or from the run's
  # ensemble with mixup VALUE (kd-mixup: distill.mixup=VALUE), then (b) and it are paired.
  cp -r "$SRC/data" "$SRC/baseline" "$SRC/baseline_seeds" "$SRC/teacher" "$DST/"
  marks prepare baseline baseline_seeds vae ldm sample synth_quality pretrain finetune
  KEY=distill.baseline_seeds
  [ "$KIND" = kd-mixup ] && KEY=distill.mixup
  SET=(-c "$CONFIG" --run-dir "$DST" --set "$KEY=$VALUE" --set "ablate.variants=[b,d]"
       --set "ablate.seeds=${SEEDS:-1}")
  "$DERMAE" distill "${SET[@]}"
  "$DERMAE" ablate "${SET[@]}"
elif [ "$KIND" = seeds ]; then
  # The run's (b), teacher and student; the ablation trains (b) and (d) at VALUE seeds in all
  # (ablate.seeds, reusing baseline_seeds for (b)) and pairs the means over seeds.
  cp -r "$SRC/data" "$SRC/baseline" "$SRC/baseline_seeds" "$SRC/teacher" "$SRC/student" \
    "$SRC/teacher_ensemble" "$DST/"
  marks prepare baseline baseline_seeds vae ldm sample synth_quality pretrain finetune distill
  "$DERMAE" ablate -c "$CONFIG" --run-dir "$DST" --set "ablate.seeds=$VALUE" \
    --set "ablate.variants=[b,d]"
fi
uptime
