# Sourced by the studies that reuse a finished run's data and teacher members.
copy_teacher_run() {  # source run, new run dir: the same data and (b)'s resnet10t members
  if [ ! -d "$2" ]; then
    mkdir -p "$2/stages"
    cp -r "$1/config.yaml" "$1/data" "$1/baseline" "$1/baseline_seeds" "$2/"
    for m in prepare baseline baseline_seeds; do cp "$1/stages/$m.json" "$2/stages/"; done
  fi
}
