#!/bin/bash
# N seeds of (b) and of the DerMAE student, with and without mixup 0.4, on one finished
# cpu-full run (at least `dermae run -c configs/cpu-full.yaml --until distill`): BENCHMARKS.md
# section 25. The teacher stays the run's (ViT + (b) + its two extra seeds). (b)'s seeds 0-2
# are the run's baseline and baseline_seeds members; each arm's ablation (ablate.seeds=N)
# trains the students' other seeds, and (b)'s seeds past 2 once for both arms.
# seed_study.py then scores every model on validation (where the mixup choice is made) and test,
# and pairs the teacher ensemble with (b)'s mean too (the bar a student can reach).
#   DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh        # N=3: about 35 min (AMX)
#   N=5 DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh    # then 5: about 35 min more
# A larger N reuses every seed already trained (finished checkpoints resume at their end).
#   G=1 N=5 DERMAE_THREADS=2 bash benchmarks/cpu_full_seed_study.sh  # and variant (g) in the
#       mixup arm: (b) + mixup 0.4, no teacher, at N seeds (section 26), paired like the rest
set -euo pipefail
SRC=${SRC:-runs/cpu-full}
CONFIG=${CONFIG:-configs/cpu-full.yaml}
DERMAE=${DERMAE:-.venv/bin/dermae}
PY=$(dirname "$DERMAE")/python
N=${N:-3}
FOLLOW=benchmarks/cpu_full_followups.sh
NOMIX=$SRC-seeds-study
MIX=$SRC-kd-mixup-0.4-study
has_seeds() {  # run dir -> true when its ablation already holds N seeds
  "$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])).get("seeds") or {}
sys.exit(0 if s.get("n") == int(sys.argv[2]) else 1)' "$1/ablate/ablation.json" "$N" 2>/dev/null
}
ablate() {
  "$DERMAE" ablate -c "$CONFIG" --run-dir "$1" --set "ablate.seeds=$N" \
    --set "ablate.variants=[b,d]" "${@:2}"
}
[ -d "$NOMIX" ] || SRC=$SRC bash "$FOLLOW" seeds "$N" study
has_seeds "$NOMIX" || ablate "$NOMIX"
if [ ! -d "$MIX" ]; then
  SEEDS=$N SRC=$SRC bash "$FOLLOW" kd-mixup 0.4 0.4-study
elif ! has_seeds "$MIX"; then
  mkdir -p "$MIX/ablate/seeds"
  for b in "$NOMIX"/ablate/seeds/b_seed_plus_*; do  # the same (b) models: train them once
    if [ -d "$b" ] && [ ! -d "$MIX/ablate/seeds/$(basename "$b")" ]; then
      cp -r "$b" "$MIX/ablate/seeds/"
    fi
  done
  ablate "$MIX" --set distill.mixup=0.4
fi
G_RECIPE=()
if [ "${G:-0}" = 1 ]; then
  has_g() { "$PY" -c 'import json, sys
sys.exit(0 if "g_mixup_no_kd" in (json.load(open(sys.argv[1])).get("seeds") or {}).get("models", {}) else 1)' \
    "$MIX/ablate/ablation.json"; }
  has_g || ablate "$MIX" --set distill.mixup=0.4 --set "ablate.variants=[b,d,g]"
fi
folders() {  # run dir, recipe -> its seeds' folders as its ablation lists them, comma-separated
  "$PY" -c 'import json, sys
print(",".join(json.load(open(sys.argv[1]))["seeds"]["models"][sys.argv[2]]))' \
    "$1/ablate/ablation.json" "$2"
}
[ "${G:-0}" = 1 ] && G_RECIPE=(--recipe "g_mixup_0.4_no_kd=$(folders "$MIX" g_mixup_no_kd)")
SUFFIX=$([ "${G:-0}" = 1 ] && echo _g || true)
"$PY" benchmarks/seed_study.py "$SRC" --reference b \
  --recipe "b=$(folders "$NOMIX" b_simple_fix)" \
  --recipe "d_mixup_0=$(folders "$NOMIX" d_dermae)" \
  --recipe "d_mixup_0.4=$(folders "$MIX" d_dermae)" "${G_RECIPE[@]}" \
  --bar "teacher_ensemble=$SRC/teacher_ensemble/model" \
  --out "benchmarks/results/$(basename "$SRC" | tr - _)_seed_study_${N}seeds$SUFFIX.json"
