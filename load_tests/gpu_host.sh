#!/usr/bin/env bash
# The GPU checks on a host with a stock PyTorch image and no package index, from the offline
# bundle that `make gpu-bundle` builds (load_tests/offline_bundle.py). From the project root:
#
#   load_tests/gpu_host.sh [unpack] [tests] [diagnose] [bench] [serve]   (default: all of them)
#
#   unpack  unpack every part of .offline/ present into .offline/site (once per archive;
#           parts may arrive one at a time) and check that what each step needs imports
#   tests   python -m pytest tests/gpu
#   diagnose python -m load_tests.gpu_diagnose     -> load_tests/results/gpu_diagnose_<device>.json
#   bench   python -m load_tests.bench_gpu          -> load_tests/results/gpu_<device>.json
#   serve   python -m load_tests.bench_server_gpu   -> load_tests/results/server_gpu_<device>.json
#
# Without CUDA it says so and stops (GPU_HOST_ON_CPU=1: run anyway, to check the steps).
# Extra arguments for the benchmarks: BENCH_GPU_ARGS, BENCH_SERVE_ARGS. Each step's output is
# kept in load_tests/results/gpu_host_<step>.log; where $OUT is set, logs are written there as
# they grow and results copied there as each step ends, or when the script is stopped (a
# device's time limit). A failed step does not stop the next; the exit status says whether
# any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(unpack tests diagnose bench serve)
export PYTHONPATH="$PWD/.offline/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 RAY_DEDUP_LOGS=0
results=load_tests/results
status=0

keep() {  # copy what a step wrote to $OUT (the device tool brings $OUT back)
  [ -n "${OUT:-}" ] || return 0
  cp -f "$@" "$OUT/" 2>/dev/null || true
}

run_step() {  # run_step NAME COMMAND...: time it, log it (into $OUT too, as it grows)
  local name=$1 log=$results/gpu_host_$1.log start=$SECONDS
  shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$log" ${OUT:+"$OUT/$(basename "$log")"}
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$log"
  [ "$rc" = 0 ] || status=1
  keep "$log"
  return "$rc"
}
# Stopped from outside (Ctrl-C, a signal to the process group): what the benchmarks saved so
# far still goes to $OUT.
trap 'keep "$results"/gpu_*.json "$results"/server_gpu_*.json "$results"/gpu_host_*.log; exit 143' TERM INT

if ! python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null &&
   [ -z "${GPU_HOST_ON_CPU:-}" ] && [ "${steps[*]}" != unpack ]; then
  echo "skipped: no CUDA GPU here (GPU_HOST_ON_CPU=1 runs the steps on the CPU, as a self-check)"
  exit 0
fi
for step in "${steps[@]}"; do
  case $step in
    unpack)
      run_step unpack python3 -m load_tests.offline_bundle unpack .offline .offline/site
      python3 - <<'EOT'
import importlib, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device:",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
for step, modules in {
    "tests, bench": ["pydantic", "piper.train.vits.models", "serve_app.model.engines.piper"],
    "serve": ["ray", "ray.serve", "fastapi", "soundfile", "soxr", "serve_app.app"],
}.items():
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report which step it stops
            print(f"{step}: cannot import {name}: {exc!r}")
EOT
      ;;
    tests) run_step tests python3 -m pytest tests/gpu -v -p no:cacheprovider ;;
    diagnose)
      run_step diagnose python3 -m load_tests.gpu_diagnose
      keep "$results"/gpu_diagnose_*.json
      ;;
    bench)
      # shellcheck disable=SC2086
      run_step bench python3 -m load_tests.bench_gpu ${BENCH_GPU_ARGS:-}
      keep "$results"/gpu_*.json
      ;;
    serve)
      # shellcheck disable=SC2086
      run_step serve python3 -m load_tests.bench_server_gpu ${BENCH_SERVE_ARGS:-}
      keep "$results"/server_gpu_*.json
      ;;
    *) echo "unknown step $step (unpack, tests, diagnose, bench, serve)" >&2; exit 2 ;;
  esac
done
exit $status
