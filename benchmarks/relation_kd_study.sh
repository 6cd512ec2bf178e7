#!/bin/bash
# Relational KD (`distill.relation_weight`) on the DerMAE student of a finished cpu-full-phone run
# (five seeds of (b) and (d) in its ablation, as in BENCHMARKS.md sections 36-37):
#   DERMAE_THREADS=2 bash benchmarks/relation_kd_study.sh runs/cpu-full-phone benchmarks/results
# 1. Seed 0 at each weight in BETAS (benchmarks/student_variant_study.py, into
#    <run>/relation<beta>/); the weight with the best validation balanced accuracy (the kept
#    checkpoint's) is chosen. Test is not read for the choice.
# 2. The chosen weight at SEEDS seeds (seed k pairs with the run's (d) seed k: same
#    initialisation and data order; only the relation term differs), paired on test with
#    (b) (<out>/cpu_full_phone_relation_kd.json) and with the run's (d)
#    (<out>/cpu_full_phone_relation_vs_d.json).
# About 13 min per student on the AMX host (2 threads).
set -euo pipefail
R=${1:?run dir}
OUT=${2:?output folder}
BETAS=${BETAS:-"10 30"}
SEEDS=${SEEDS:-5}
CONFIG=${CONFIG:-configs/cpu-full-phone.yaml}
PY=${PY:-python}

variant() { # beta seeds out
  "$PY" benchmarks/student_variant_study.py "$R" -c "$CONFIG" --name "relation$1" \
    --set "distill.relation_weight=$1" --seeds "$2" --out "$3"
}
best_val() {
  "$PY" -c "import json,sys; print(max(json.loads(l).get('val_balanced_accuracy', 0) for l in open(sys.argv[1])))" "$1"
}

chosen=""
chosen_val=-1
for b in $BETAS; do
  echo "beta $b, seed 0: start $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  variant "$b" 1 "$OUT/relation_probe_beta$b.json"
  v=$(best_val "$R/relation$b/d_seed_0/train/metrics.jsonl")
  echo "beta $b: best validation balanced accuracy $v"
  if "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$v" "$chosen_val"; then
    chosen=$b
    chosen_val=$v
  fi
done
echo "chosen on validation: beta $chosen; seeds start $(date -u +%T)"
variant "$chosen" "$SEEDS" "$OUT/cpu_full_phone_relation_kd.json"  # seed 0 is resumed, done
echo "seeds end $(date -u +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"

folders() { # the run's (d) seeds, as its ablation lists them
  "$PY" -c "import json,sys; print(','.join(json.load(open(sys.argv[1]))['seeds']['models']['d_dermae'][:int(sys.argv[2])]))" "$R/ablate/ablation.json" "$SEEDS"
}
relation=$(for k in $(seq 0 $((SEEDS - 1))); do echo -n "$R/relation$chosen/d_seed_$k/model,"; done)
"$PY" benchmarks/seed_study.py "$R" --reference d --recipe "d=$(folders)" \
  --recipe "d_relation=${relation%,}" --out "$OUT/cpu_full_phone_relation_vs_d.json"
