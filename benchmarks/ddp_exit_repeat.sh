#!/usr/bin/env bash
# How often a 2-process CPU run of the tiny fit fails at exit (the gloo teardown abort that
# src/dermae/engine/distributed.py prevents). One CPU job: nothing else should run beside it.
#   N=40 bash benchmarks/ddp_exit_repeat.sh   # about 3.5 min on 2 cores
set -u
n=${N:-20}
out=$(mktemp -d)
fails=0
for i in $(seq 1 "$n"); do
  rm -rf "$out/run"
  if ! .venv/bin/python -m torch.distributed.run --nproc_per_node 2 --master_port 29517 \
      -m tests.helpers.tiny_fit "$out/run" --steps 6 --no-jitter > "$out/log_$i" 2>&1; then
    fails=$((fails + 1))
    grep -h "terminate" "$out/log_$i"
  fi
done
echo "failed runs: $fails of $n (logs in $out)"
