# Sourced by the probe scripts (baseline_budget, teacher_class, teacher_resolution).

# copy_prepared SRC DST: DST becomes a run holding only SRC's prepared data (and its stage
# record, so `dermae run` skips prepare), unless DST exists already.
copy_prepared() {
  if [ ! -d "$2" ]; then
    mkdir -p "$2/stages"
    cp -r "$1/data" "$2/"
    cp "$1/stages/prepare.json" "$2/stages/"
  fi
}

# seed_members SRC: start ARGS (teacher_ensemble_probe.py arguments) with SRC's three seeds of
# (b) as members b0-b2 and their ensemble; ALL names every member added so far.
seed_members() {
  ARGS=(--member "b0=$1/baseline/model" --member "b1=$1/baseline_seeds/seed_plus_1/model"
        --member "b2=$1/baseline_seeds/seed_plus_2/model" --ensemble b0+b1+b2)
  ALL=b0+b1+b2
}

# add_member NAME FOLDER: the member alone and with (b)'s seeds.
add_member() {
  ARGS+=(--member "$1=$2" --ensemble "$1" --ensemble "b0+b1+b2+$1")
  ALL="$ALL+$1"
}

# score_members SRC OUT: every ensemble above plus all members together, on SRC's splits.
score_members() {
  [ "$ALL" = b0+b1+b2 ] || ARGS+=(--ensemble "$ALL")
  PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/teacher_ensemble_probe.py "$1" "${ARGS[@]}" \
    --out "$2"
}
