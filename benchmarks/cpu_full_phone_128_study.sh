#!/bin/bash
# BENCHMARKS.md sections 39-40: cpu-full-phone's student at 128 px, (b) at 128 px beside it.
# Needs the finished cpu-full-phone run (SRC, default runs/cpu-full-phone):
#   dermae run -c configs/cpu-full-phone.yaml --set 'ablate.variants=[b,d]'
# The study folder links SRC's data, generator, ViT teacher and 64-px (b) members instead of
# training them again (run_record.py lists them under stages_lent) and trains only what the
# resolution changes: (b) and (d) at 128 px on real images, at SEEDS seeds (default 3).
#   TEACHER=run   (section 39) the run's teacher: MAE ViT + three resnet10t at 64 px, which
#                 see the student's 128-px view resized down;
#   TEACHER=h128  (section 40) that teacher plus two resnet10t members at 128 px (1,800 steps,
#                 the section 26 members), which see the student's view whole.
# TEACHER=h128 copies (b)'s 128-px seeds from the TEACHER=run folder when it exists (the same
# recipe and seeds), so only the teacher's members and (d) train.
#   DERMAE_THREADS=2 TEACHER=h128 bash benchmarks/cpu_full_phone_128_study.sh
# Rerunning resumes per stage and per seed; SEEDS=4 on a finished folder adds one seed pair.
set -euo pipefail
SRC=${SRC:-runs/cpu-full-phone}
TEACHER=${TEACHER:-run}
SEEDS=${SEEDS:-3}
PY=${PY:-.venv/bin/python}
DERMAE=${DERMAE:-.venv/bin/dermae}
case "$TEACHER" in
  run) DST=$SRC-s128; EXTRA=() ;;
  h128)
    DST=$SRC-h128
    EXTRA=(--set cnn_teacher.members=2 --set cnn_teacher.image_size=128
           --set cnn_teacher.train.max_steps=1800 --set cnn_teacher.train.lr=0.003
           --set cnn_teacher.train.warmup_steps=50 --set cnn_teacher.train.eval_every=100
           --set cnn_teacher.train.mixed_precision=auto
           --set 'distill.teachers=[teacher,baseline,cnn_teacher]') ;;
  *) echo "TEACHER must be run or h128, not '$TEACHER'" >&2; exit 2 ;;
esac
[ -f "$SRC/stages/finetune.json" ] || {
  echo "$SRC has no finished teacher: run cpu-full-phone first (see the header)" >&2; exit 2; }
LENT=(data synth pretrain teacher baseline baseline_seeds)
if [ "$TEACHER" = run ]; then LENT+=(cnn_teacher); fi  # members: 0 in the config
if [ ! -d "$DST" ]; then
  mkdir -p "$DST/stages" "$DST/ablate/seeds"
  for s in "${LENT[@]}"; do ln -s "$(realpath "$SRC/$s")" "$DST/$s"; done
  cp "$SRC/config.yaml" "$DST/"
  for m in prepare baseline baseline_seeds vae ldm sample synth_quality pretrain finetune; do
    cp "$SRC/stages/$m.json" "$DST/stages/"
  done
  B128=$SRC-s128/ablate
  if [ "$TEACHER" = h128 ] && [ -d "$B128/b_simple_fix" ]; then
    cp -r "$B128/b_simple_fix" "$DST/ablate/"
    for k in $(seq 1 $((SEEDS - 1))); do
      if [ -d "$B128/seeds/b_seed_plus_$k" ]; then cp -r "$B128/seeds/b_seed_plus_$k" "$DST/ablate/seeds/"; fi
    done
  fi
fi
NAME=$(basename "$DST" | tr - _)
LOG=$DST.log
uptime > "$DST.uptime_before"
/usr/bin/time -v "$DERMAE" run -c configs/cpu-full-phone.yaml --run-dir "$DST" \
  --set distill.image_size=128 --set distill.synthetic_ratio=0 \
  --set 'ablate.variants=[b,d]' --set "ablate.seeds=$SEEDS" "${EXTRA[@]}" > "$LOG" 2>&1
uptime > "$DST.uptime_after"
OUT=benchmarks/results/$NAME
"$PY" benchmarks/run_record.py "$DST" "$LOG" --uptime-before "$DST.uptime_before" \
  --uptime-after "$DST.uptime_after" --out "${OUT}_run.json" \
  --command "DERMAE_THREADS=2 TEACHER=$TEACHER SEEDS=$SEEDS bash $0"
cp "$DST/ablate/ablation.json" "${OUT}_ablation.json"
folders() {  # ablation.json, recipe -> its seeds' model folders, comma-separated
  "$PY" -c 'import json, sys
print(",".join(json.load(open(sys.argv[1]))["seeds"]["models"][sys.argv[2]]))' "$1" "$2"
}
RECIPES=(--recipe "b128=$(folders "$DST/ablate/ablation.json" b_simple_fix)"
         --recipe "d128=$(folders "$DST/ablate/ablation.json" d_dermae)")
BARS=(--bar "teacher=$DST/teacher_ensemble/model")
if [ "$TEACHER" = h128 ] && [ -f "$SRC-s128/ablate/ablation.json" ]; then
  RECIPES+=(--recipe "d128_run_teacher=$(folders "$SRC-s128/ablate/ablation.json" d_dermae)")
  BARS+=(--bar "run_teacher=$SRC-s128/teacher_ensemble/model")
fi
"$PY" benchmarks/seed_study.py "$DST" --reference b128 "${RECIPES[@]}" "${BARS[@]}" \
  --out "${OUT}_study.json"
