"""The GEMM kernel compiled for Hopper (sm_90) on the CPU, for what the interpreter cannot show.

The interpreter runs the kernel's Python as Python, so code Triton's compiler refuses can pass every interpreter
test (a helper returning early from a constexpr branch did). Each case here is compiled for sm_90, as on an
H100/H200, by tests/hopper_compile.py in a process of its own (no interpreter, a stand-in driver); nothing runs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from moekernel.heuristics import HOPPER_SMEM_BYTES

HERE = Path(__file__).parent
SHAPES = {
    "bf16": "E8-N512-K256-top2-bf16",
    "fp8": "E8-N512-K256-top2-fp8_w8a8",
    "fp8-block": "E8-N512-K256-top2-fp8_w8a8-block128x128",
    "int8-w8a16": "E8-N512-K256-top2-int8_w8a16",
    "int8-channel": "E8-N512-K256-top2-int8_w8a8-perchannel",
}
SMALL_M = dict(BLOCK_SIZE_M=16, BLOCK_SIZE_N=128, BLOCK_SIZE_K=128, GROUP_SIZE_M=1, num_warps=4, num_stages=3)
LARGE_M = dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=64, GROUP_SIZE_M=8, num_warps=8, num_stages=3)
# Every family of moekernel's own parameters, on the tiles of both ends of the batch sizes.
CONFIGS = {
    "small": SMALL_M,
    "large": LARGE_M,
    "split-k-tma": dict(SMALL_M, SPLIT_K=2, TMA=1),
    "tma-both-persistent": dict(LARGE_M, TMA=2, PERSISTENT=1),
    "split": {"up": dict(LARGE_M, TMA=1), "down": dict(LARGE_M, TMA=2, SPLIT_K=2)},
    "half-tail": {"up": dict(LARGE_M, TMA=2, HALF_TAIL=1), "down": dict(LARGE_M, TMA=2, SPLIT_K=2, HALF_TAIL=1)},
}
# Every dtype and quantization mode with the parameters that interact with them most; both tile sizes and a split
# config for the 16-bit and fp8 GEMMs (about 3 s of compiling a case).
CASES = ([(dtype, name) for dtype in SHAPES for name in ("split-k-tma", "tma-both-persistent")]
         + [(dtype, name) for dtype in ("bf16", "fp8") for name in ("small", "large", "split", "half-tail")])


def compile_for_hopper(cases) -> list[dict]:
    """tests/hopper_compile.py's outcome for each (kernel key, config) case, compiled in one process."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MOEKERNEL_PDL")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE / "hopper_compile.py"), json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


# One test, so that pytest-xdist compiles the cases once, on one worker (about a minute from an empty cache).
def test_every_config_family_compiles_for_hopper_fits_and_large_tiles_use_wgmma():
    # The last case compiles with programmatic dependent launch off.
    compiled = compile_for_hopper([[SHAPES[dtype], CONFIGS[name]] for dtype, name in CASES]
                                  + [[SHAPES["bf16"], CONFIGS["small"], False]])
    results = dict(zip(CASES, compiled))
    failed = {f"{dtype}-{name}": r["error"] for (dtype, name), r in results.items() if not r["ok"]}
    assert not failed, failed
    # Compiling does not check shared memory (loading the binary on the GPU does): each must fit an H100/H200.
    too_big = {f"{d}-{n}": [b["shared"] for b in r["binaries"]] for (d, n), r in results.items()
               if any(b["shared"] > HOPPER_SMEM_BYTES for b in r["binaries"])}
    assert not too_big, too_big
    # wgmma, Hopper's asynchronous MMA, takes rows 64 at a time: a tile of 128 rows runs on it, one of 16 on the
    # older mma.sync. A kernel change that lost wgmma would cost the prefill sizes their speed without a failure.
    for dtype in ("bf16", "fp8"):
        large, small = results[(dtype, "large")]["binaries"], results[(dtype, "small")]["binaries"]
        assert large and all(b["mma"] == 3 for b in large), (dtype, large)
        assert small and all(b["mma"] == 2 for b in small), (dtype, small)
    # On Hopper the op's kernels launch with PDL by default, so each must wait for the kernel before it (one that
    # did not could read the intermediate before the up GEMM has written it); with PDL off none does.
    no_wait = [f"{d}-{n}" for (d, n), r in results.items() if not all(b["pdl"] for b in r["binaries"])]
    assert not no_wait, no_wait
    assert compiled[-1]["ok"] and not any(b["pdl"] for b in compiled[-1]["binaries"]), compiled[-1]
