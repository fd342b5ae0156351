#!/usr/bin/env bash
# One lease of a GPU machine: check, test and time everything in one call (see BENCHMARKS.md).
#   bash benchmarks/gpu_session.sh STAGE...   (stages below; BATCHES (comma-separated), KEY, DIRS, STAGE_TIMEOUT)
# Logs and shards are written to $WORK and packed into $OUT/session.tar after every stage (the device tool returns
# at most 8 files, so one archive; a stage cut off by the call's limit still leaves the earlier ones). The GPU
# machine has torch + triton but no snakemake/duckdb, which travel as wheels in .whl/
# (../shared/tools/gpu-wheels.sh) and are installed here first.
set -u
OUT=${OUT:-gpu-logs}; WORK=${WORK:-/tmp/moekernel-gpu}; mkdir -p "$OUT" "$WORK"
KEY=${KEY:-E8-N7168-K4096-top2-bf16}
ALL_BATCHES=1,2,4,8,16,24,32,48,64,96,128,256,512,1024,1536,2048,3072,4096
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ -d /tmp/site ] && export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH  # installed by an earlier call
if [ -d .whl ] && ! python3 -c "import snakemake, duckdb" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site PATH=/tmp/site/bin:$PATH
fi
run() { local name=$1; shift; echo "=== $name: $*"; local t0=$SECONDS
  timeout "${STAGE_TIMEOUT:-400}" "$@" > "$WORK/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-25}" "$WORK/$name.log"; echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  echo "$name rc=$rc wall_s=$((SECONDS - t0))" >> "$WORK/walls.txt"
  tar -cf "$OUT/session.tar" -C "$WORK" . ; }
# A fresh Triton cache, so a tuner's wall time includes compiling its candidates.
cold() { TRITON_CACHE_DIR=$(mktemp -d) "$@"; }
TUNE="python3 -m moekernel.tune --key $KEY --quiet"  # word-split on purpose: timeout runs programs, not functions
for stage in "$@"; do
  case $stage in
    env) nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
         python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" ;;
    # Every module that runs kernels or the tuner, with the real kernels (no TRITON_INTERPRET on a GPU machine).
    tests) run gpu-tests python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_fused_moe.py tests/test_pdl.py tests/test_routing.py \
             tests/test_configs.py tests/test_bench.py tests/test_roofline.py tests/test_tuning_*.py \
             tests/test_pipeline_verify.py ;;
    # The kernel's and the extended search's tests alone (a short lease's check after a kernel change).
    tests-kernel) run gpu-tests-kernel python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_fused_moe.py tests/test_pdl.py \
             tests/test_routing.py tests/test_tuning_extended.py ;;
    # Pipeline folders an earlier lease of the same machine left behind: start from none.
    clean) rm -rf "$WORK/run" "$WORK/run-qwen3" "$WORK/tuned" ;;
    # Split-K at small M: our default (extended parameters) against the same default in the engines' six, and
    # vLLM's shipped H200 file on our kernel, one run.
    bench-split) run bench-split python3 -m moekernel.bench --batch-sizes "${BATCHES:-1,2,4,8,16,32,64}" \
             --configs benchmarks/vllm-h200-configs --skip-torch --markdown --json "$WORK/bench-split.json" ;;
    # Which TMA modes and tiles pay on each shape, against vLLM's H200 file or the default (KEYS comma-separated).
    tma-probe) run tma-probe python3 benchmarks/tma_probe.py ${KEYS:+--keys "$KEYS"} ${BATCHES:+--batch-sizes "$BATCHES"} \
             --json "$WORK/tma-probe.json" ;;
    # Other down-GEMM tiles and the top-k sum in the down GEMM, on top of moekernel's own tuned files.
    down-probe) run down-probe python3 benchmarks/tma_probe.py --probe down ${KEYS:+--keys "$KEYS"} \
             --batch-sizes "${BATCHES:-256,1024,2048,4096}" --json "$WORK/down-probe.json" ;;
    # Persistent GEMMs (and the order they walk the tiles in), on top of moekernel's own tuned files.
    persistent-probe) run persistent-probe python3 benchmarks/tma_probe.py --probe persistent ${KEYS:+--keys "$KEYS"} \
             --batch-sizes "${BATCHES:-1,64,256,512,1024,2048,4096}" --json "$WORK/persistent-probe.json" ;;
    # Half tiles for the row blocks that are half padding (HALF_TAIL), on top of moekernel's own tuned files.
    tail-probe) run tail-probe python3 benchmarks/tma_probe.py --probe tail --own "${OWN:-benchmarks/tuned-h200-turns}" \
             ${KEYS:+--keys "$KEYS"} --batch-sizes "${BATCHES:-64,128,256,512,1024,1536,2048,3072,4096}" --draws 3 \
             --json "$WORK/tail-probe.json" ;;
    # Programmatic dependent launch: moekernel's own files launched with it (the default) and without, all 18 sizes.
    pdl-probe) run pdl-probe python3 benchmarks/tma_probe.py --probe pdl --own "${OWN:-benchmarks/tuned-h200-tail}" \
             ${KEYS:+--keys "$KEYS"} --batch-sizes "${BATCHES:-$ALL_BATCHES}" --draws 3 --json "$WORK/pdl-probe.json" ;;
    # The timing method against itself: moekernel's own files' config as three runners taking turns.
    same-probe) run same-probe python3 benchmarks/tma_probe.py --probe same --own "${OWN:-benchmarks/tuned-h200-tail}" \
             ${KEYS:+--keys "$KEYS"} --batch-sizes "${BATCHES:-1,64,256,512,1024,1536,2048,3072,4096}" --draws 3 \
             --json "$WORK/same-probe.json" ;;
    # Where a call's time goes: the base configs' up and down GEMMs alone, and the rest (alignment, sum, quantization).
    breakdown) run breakdown python3 benchmarks/tma_probe.py --breakdown --skip-variants --batch-sizes "${BATCHES:-1,64,512,1024,4096}" \
             --json "$WORK/breakdown.json" ;;
    bench) run bench-bf16 python3 -m moekernel.bench --configs benchmarks/vllm-h100-configs --markdown --json "$WORK/bench-bf16.json" ;;
    bench-fp8) run bench-fp8 python3 -m moekernel.bench --dtype fp8_w8a8 --configs benchmarks/vllm-h100-configs --markdown --json "$WORK/bench-fp8.json" ;;
    # fast and exhaustive at each of BATCHES, each run from an empty Triton cache (pairs: both, M by M). A shard
    # left as $WORK/exh/bsM.parquet.partial (copied there from an earlier lease) is resumed, not started over.
    fast|exhaustive|pairs) for M in $(echo "${BATCHES:-1,64,1024}" | tr , " "); do
            [ $stage = exhaustive ] || cold run fast-bs$M $TUNE --batch-size $M --strategy fast --out "$WORK/fast/bs$M.parquet"
            [ $stage = fast ] || cold run exh-bs$M $TUNE --batch-size $M --strategy exhaustive --out "$WORK/exh/bs$M.parquet"
          done ;;
    # All 18 batch sizes, fast, one process and one (initially empty) Triton cache: the issue-3 goal run.
    tune-all) cold run tune-all $TUNE --batch-size "${BATCHES:-$ALL_BATCHES}" --strategy fast --out "$WORK/all/bs{batch_size}.parquet" ;;
    compile) space='{"BLOCK_SIZE_M":[16,64],"BLOCK_SIZE_N":[64,128],"BLOCK_SIZE_K":[64,128],"GROUP_SIZE_M":[1],"num_warps":[4,8],"num_stages":[3,4]}'
          for jobs in 1 16; do
            cold run compile-jobs$jobs $TUNE --batch-size 4096 --space "$space" --compile-only --jobs $jobs
          done ;;
    # Engine files from the shards of DIRS (folders under $WORK, or carried ones), for the side-by-side stages.
    emit) for d in ${DIRS:-fast exh all}; do
            src=$d; [ -d "$src" ] || src=$WORK/$d
            run emit-$(basename $d) python3 -c "import glob, sys; from moekernel.pipeline.emit import emit_from_shards; print(emit_from_shards(sorted(glob.glob(sys.argv[1] + '/*.parquet')), sys.argv[2]))" "$src" "$WORK/configs-$(basename $d)"
          done ;;
    # Winners re-timed side by side in one process: vLLM's shipped configs, and every configs-* folder emit made.
    sidebyside) tuned=(); for d in "$WORK"/configs-*; do [ -d "$d" ] && tuned+=(--tuned "$d"); done
          run sidebyside python3 -m moekernel.bench --batch-sizes "${BATCHES:-$ALL_BATCHES}" --configs benchmarks/vllm-h100-configs \
            "${tuned[@]}" --skip-torch --iters 50 --markdown --json "$WORK/sidebyside.json" ;;
    # The pipeline for one key (KEY's model at tp=2, all 18 sizes), from an empty Triton cache: compare its wall time
    # with tune-all's. Then the same folder with a second model added: only that key is tuned (and seeded from the
    # first), verified on held-out routing.
    pipeline-mixtral|pipeline-qwen) models=mixtral-8x7b; [ $stage = pipeline-qwen ] && models="mixtral-8x7b, qwen3-30b-a3b"
          # BASELINE= (empty): no baseline folder, so verify times tuned against default only.
          baseline=${BASELINE-$PWD/benchmarks/vllm-h200-configs}
          printf 'models: [%s]\ntp_sizes: [2]\ndtypes: [bf16]\nbaseline_configs: %s\n' "$models" "${baseline:-null}" > "$WORK/$stage.yaml"
          cold run $stage snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/run" --configfile "$WORK/$stage.yaml" --cores 16
          run $stage-rerun snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/run" --configfile "$WORK/$stage.yaml" --cores 16 -n ;;
    # The pipeline for Mixtral-8x7B tp=2 in bf16 and fp8 (w8a8), all 18 sizes, from an empty Triton cache: engine
    # files and, where the split-K search pays, moekernel's own files (bench8 then benches both).
    pipeline-two-dtypes) printf 'models: [mixtral-8x7b]\ntp_sizes: [2]\ndtypes: [bf16, fp8_w8a8]\nbaseline_configs: %s\n' "$PWD/benchmarks/vllm-h200-configs" > "$WORK/$stage.yaml"
          cold run $stage snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/run" --configfile "$WORK/$stage.yaml" --cores 16 ;;
    # The pipeline for Qwen3-30B-A3B tp=2 bf16, all 18 sizes, from an empty Triton cache, in a folder of its own.
    pipeline-qwen3) printf 'models: [qwen3-30b-a3b]\ntp_sizes: [2]\ndtypes: [bf16]\nbaseline_configs: null\n' > "$WORK/$stage.yaml"
          cold run $stage snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/run-qwen3" --configfile "$WORK/$stage.yaml" --cores 16 ;;
    # A second key (Mixtral tp=4) at BATCHES, seeded from the first key's shards and not, each from an empty cache;
    # then both sets of winners side by side in one bench run.
    seeded) K4=E8-N3584-K4096-top2-bf16; B=${BATCHES:-1,16,64,256,1024,4096}
          cold run seeded python3 -m moekernel.tune --key $K4 --quiet --batch-size $B --out "$WORK/seeded/bs{batch_size}.parquet" --seed-keys "$WORK/run/results/timings/NVIDIA_H200"
          cold run unseeded python3 -m moekernel.tune --key $K4 --quiet --batch-size $B --out "$WORK/unseeded/bs{batch_size}.parquet"
          for d in seeded unseeded; do python3 -c "import glob, sys; from moekernel.pipeline.emit import emit_from_shards; emit_from_shards(sorted(glob.glob(sys.argv[1] + '/*.parquet')), sys.argv[2])" "$WORK/$d" "$WORK/cfg-$d"; done
          run seeded-sidebyside python3 -m moekernel.bench --key $K4 --batch-sizes $B --tuned "$WORK/cfg-seeded" --tuned "$WORK/cfg-unseeded" --skip-torch --iters 50 --markdown --json "$WORK/seeded-sidebyside.json" ;;
    # A Triton version change faked through MOEKERNEL_TRITON_VERSION: the second run re-tunes once, both kept.
    version) printf 'models: [mixtral-8x7b]\ntp_sizes: [2]\ndtypes: [bf16]\nbatch_sizes: [1, 64]\nsearch: {strategy: exhaustive, space: {BLOCK_SIZE_M: [16, 64], BLOCK_SIZE_N: [64, 128], BLOCK_SIZE_K: [128], GROUP_SIZE_M: [1], num_warps: [4], num_stages: [3, 4]}}\n' > "$WORK/version.yaml"
          run version-1 snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/version" --configfile "$WORK/version.yaml" --cores 16
          MOEKERNEL_TRITON_VERSION=$(python3 -c "import triton; print(triton.__version__)")+fake run version-2 snakemake --snakefile "$PWD/Snakefile" --directory "$WORK/version" --configfile "$WORK/version.yaml" --cores 16
          run version-db python3 -c "import duckdb; c = duckdb.connect('$WORK/version/results/tuning.duckdb', read_only=True); print(c.sql('SELECT * FROM versions ORDER BY key, batch_size, current')); print(c.sql('SELECT * FROM version_speedup'))" ;;
    # Our kernel on every shape: default (extended), default-six, the tuned files of the pipeline run, vLLM's files
    # where they exist, torch._grouped_mm. KEYS: the kernel keys.
    # The pipelines' files (and TUNED's, a folder carried from an earlier lease) gathered into one folder.
    bench8) mkdir -p "$WORK/tuned"
          for d in "$WORK/run/results/configs" "$WORK/run-qwen3/results/configs" ${TUNED:-}; do
            [ -d "$d" ] && cp "$d"/*.json "$WORK/tuned/"; done
          for k in ${KEYS:-E8-N7168-K4096-top2-bf16 E128-N384-K2048-top8-bf16 E8-N7168-K4096-top2-fp8_w8a8}; do
            tuned=(); ls "$WORK/tuned"/*.json >/dev/null 2>&1 && tuned=(--tuned "$WORK/tuned")
            run bench8-$k python3 -m moekernel.bench --key $k --configs benchmarks/vllm-h200-configs "${tuned[@]}" --markdown --json "$WORK/bench8-$k.json"
          done ;;
    pipeline) rm -rf /tmp/gpu-run
          run pipeline snakemake --snakefile "$PWD/Snakefile" --directory /tmp/gpu-run --configfile "$PWD/benchmarks/gpu-pipeline.yaml" --cores 16
          run pipeline-rerun snakemake --snakefile "$PWD/Snakefile" --directory /tmp/gpu-run --configfile "$PWD/benchmarks/gpu-pipeline.yaml" --cores 16 -n
          (cd /tmp/gpu-run && tar czf "$WORK/gpu-run.tgz" results logs) ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
