#!/bin/bash
# Relational KD (`distill.relation_weight`) on the DerMAE student of a finished cpu-full-phone run
# (all six variants and five seeds of (b) and (d), as in BENCHMARKS.md section 37):
#   DERMAE_THREADS=2 bash benchmarks/relation_kd_study.sh runs/cpu-full-phone benchmarks/results
# 1. Seed 0 at each weight in BETAS; the weight with the best validation balanced accuracy
#    (the kept checkpoint's) is chosen. Test is not read for the choice.
# 2. The chosen weight at the other SEEDS (seed k pairs with the run's d_seed_plus_k: same
#    initialisation and data order; only the relation term differs).
# 3. benchmarks/seed_study.py pairs (b), (d) and (d) + relation on test, against (b) and
#    against (d).
# Each student trains in its own run folder beside the run, which lends it data, synthetic
# images and teachers through symlinks (nothing in the run is written). About 15 min per
# student on the AMX host (2 threads).
set -euo pipefail
R=${1:?run dir}
OUT=${2:?output folder}
BETAS=${BETAS:-"10 30"}
SEEDS=${SEEDS:-"1 2 3 4"}
CONFIG=${CONFIG:-configs/cpu-full-phone.yaml}
DERMAE=${DERMAE:-dermae}
PY=${PY:-python}
STAGES="prepare baseline baseline_seeds vae ldm sample synth_quality pretrain finetune"

student() { # beta seed -> trains <R>-rel-b<beta>-s<seed>/student/model
  local d="$R-rel-b$1-s$2"
  mkdir -p "$d/stages"
  for x in data synth teacher baseline baseline_seeds; do ln -sfn "$(realpath "$R/$x")" "$d/$x"; done
  for s in $STAGES; do [ -f "$R/stages/$s.json" ] && cp "$R/stages/$s.json" "$d/stages/"; done
  echo "beta $1 seed $2: start $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  "$DERMAE" distill -c "$CONFIG" --run-dir "$d" --set "distill.relation_weight=$1" \
    --set "distill.train.seed=$2"
  echo "beta $1 seed $2: end $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
}
best_val() {
  "$PY" -c "import json,sys; print(max(json.loads(l).get('val_balanced_accuracy', 0) for l in open(sys.argv[1])))" "$1"
}

chosen=""
chosen_val=-1
for b in $BETAS; do
  student "$b" 0
  v=$(best_val "$R-rel-b$b-s0/student/train/metrics.jsonl")
  echo "beta $b: best validation balanced accuracy $v"
  if "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$v" "$chosen_val"; then
    chosen=$b
    chosen_val=$v
  fi
done
echo "chosen on validation: beta $chosen"
for s in $SEEDS; do student "$chosen" "$s"; done

seeds() { # first folder, then the ablation's extra seeds of variant $2
  echo -n "$1"
  for i in $SEEDS; do echo -n ",$R/ablate/seeds/${2}_seed_plus_$i/model"; done
}
rel="$R-rel-b$chosen-s0/student/model"
for s in $SEEDS; do rel="$rel,$R-rel-b$chosen-s$s/student/model"; done
others=()  # the weights not chosen, seed 0: scored beside, never chosen
for b in $BETAS; do
  [ "$b" = "$chosen" ] || others+=(--bar "d_relation_beta$b=$R-rel-b$b-s0/student/model")
done
"$PY" benchmarks/seed_study.py "$R" --reference b \
  --recipe "b=$(seeds "$R/ablate/b_simple_fix/model" b)" \
  --recipe "d=$(seeds "$R/student/model" d)" \
  --recipe "d_relation=$rel" \
  --bar "teacher_ensemble=$R/teacher_ensemble/model" "${others[@]}" \
  --out "$OUT/cpu_full_phone_relation_kd.json"
"$PY" benchmarks/seed_study.py "$R" --reference d \
  --recipe "d=$(seeds "$R/student/model" d)" --recipe "d_relation=$rel" \
  --out "$OUT/cpu_full_phone_relation_vs_d.json"
