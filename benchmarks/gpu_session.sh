#!/usr/bin/env bash
# One lease of a GPU machine: check, test and time everything in one call (see BENCHMARKS.md).
#   bash benchmarks/gpu_session.sh STAGE...   with STAGE in env tests bench tune pipeline
# Logs land in $OUT (or ./gpu-logs); the GPU machine has torch + triton but no snakemake/duckdb, which travel
# as wheels in .whl/ (../shared/tools/gpu-wheels.sh) and are installed here first.
set -u
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ] && ! python3 -c "import snakemake, duckdb" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH
fi
run() { local name=$1; shift; echo "=== $name: $*"; local t0=$SECONDS
  timeout "${STAGE_TIMEOUT:-400}" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-25}" "$OUT/$name.log"; echo "=== $name rc=$rc in $((SECONDS - t0)) s"; }
for stage in "$@"; do
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
         python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" ;;
    tests) run gpu-tests python3 -m pytest tests/test_fused_moe.py tests/test_routing.py tests/test_configs.py tests/test_tuning_timing.py tests/test_tuning_compile.py -q -x ;;
    bench) run bench-bf16 python3 -m moekernel.bench --configs benchmarks/vllm-h100-configs --markdown --json "$OUT/bench-bf16.json" ;;
    bench-fp8) run bench-fp8 python3 -m moekernel.bench --dtype fp8_w8a8 --configs benchmarks/vllm-h100-configs --markdown --json "$OUT/bench-fp8.json" ;;
    tune-fast) for M in ${BATCHES:-1 64 1024}; do
            run tune-fast-bs$M python3 -m moekernel.tune --key ${KEY:-E8-N7168-K4096-top2-bf16} --batch-size $M --strategy fast --out "$OUT/fast-bs$M.parquet"
          done ;;
    tune-exhaustive) for M in ${BATCHES:-1 64 1024}; do
            run tune-exh-bs$M python3 -m moekernel.tune --key ${KEY:-E8-N7168-K4096-top2-bf16} --batch-size $M --strategy exhaustive --out "$OUT/exh-bs$M.parquet"
          done ;;
    compile) space='{"BLOCK_SIZE_M":[16,64],"BLOCK_SIZE_N":[64,128],"BLOCK_SIZE_K":[64,128],"GROUP_SIZE_M":[1],"num_warps":[4,8],"num_stages":[3,4]}'
          for jobs in 1 16; do
            TRITON_CACHE_DIR=$(mktemp -d) run compile-jobs$jobs python3 -m moekernel.tune --key E8-N7168-K4096-top2-bf16 --batch-size 4096 --space "$space" --compile-only --jobs $jobs --out "$OUT/compile-jobs$jobs.parquet"
          done ;;
    sidebyside) run sidebyside python3 -m moekernel.bench --batch-sizes 1,64,1024 --configs benchmarks/vllm-h100-configs --tuned benchmarks/tuned-h200-fast --skip-torch --iters 50 --markdown --json "$OUT/sidebyside.json" ;;
    pipeline) rm -rf /tmp/gpu-run
          run pipeline snakemake --snakefile "$PWD/Snakefile" --directory /tmp/gpu-run --configfile "$PWD/benchmarks/gpu-pipeline.yaml" --cores 16
          run pipeline-rerun snakemake --snakefile "$PWD/Snakefile" --directory /tmp/gpu-run --configfile "$PWD/benchmarks/gpu-pipeline.yaml" --cores 16 -n
          (cd /tmp/gpu-run && tar czf "$OUT/gpu-run.tgz" results logs) ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
