"""Which of moekernel's own launch parameters pay, per shape and batch size: a probe for choosing the tuner's
extended search.

``--probe tma`` (the default): for each key and batch size it takes a base config (vLLM's shipped H200 file where
one exists, else moekernel's default) and times, on the same inputs and card, in one process: the base, the base
with TMA on either GEMM (the modes of moekernel.launch_params.EXTENDED_PARAMS), and, from M = 256 on, a few large
tiles with and without TMA.

``--probe down``: the base is moekernel's own tuned file (``--own``, else the default with its own parameters), and
the variants are the base with other down-GEMM tiles beside the base's up GEMM (the same BLOCK_SIZE_M, as the
alignment feeds both): do the GEMMs want configs of their own?

``--probe persistent``: the same base, with persistent GEMMs (PERSISTENT=1) on both, on the up or the down GEMM
alone, and on both with other GROUP_SIZE_M (the order the programs walk the tiles).

``--probe tail``: the same base, with HALF_TAIL=1 (a row block half padding or more computes half its rows) on
both GEMMs, on either alone, and on both with the other row-block size (64 or 128 rows, so that the half tiles are
the other's full ones).

``--probe pdl``: the same base, launched without programmatic dependent launch (moekernel.kernel.pdl), against
the base as it launches by default (with it, on Hopper): what overlapping each kernel's launch with the end of the
one before it gains.

``--probe same``: the base and two more runners of the very same config: what the timing method tells apart when
there is nothing to tell (each runner has its own workspace).

Every variant's output is checked against the base's. Times: CUDA-graph medians, the variants taking turns
(moekernel.kernel.timing.time_interleaved), averaged over ``--draws`` routing draws; the table gives each variant's
speed-up over the base (>1: faster) and the floor fraction of the base and of the best variant (roofline against
KNOWN_CEILINGS["NVIDIA_H200"]).

    python benchmarks/tma_probe.py --keys E8-N7168-K4096-top2-bf16 --batch-sizes 1,64,512,4096 [--json out.json]
    python benchmarks/tma_probe.py --probe down --own benchmarks/tuned-h200-tma
    python benchmarks/tma_probe.py --probe persistent --own benchmarks/tuned-h200-tma
    python benchmarks/tma_probe.py --probe tail --own benchmarks/tuned-h200-turns --batch-sizes 256,512,1024,4096
    python benchmarks/tma_probe.py --probe pdl --own benchmarks/tuned-h200-tail
    python benchmarks/tma_probe.py --probe same --own benchmarks/tuned-h200-tail --batch-sizes 256,1024,4096
"""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT_KEYS = "E8-N7168-K4096-top2-bf16,E8-N7168-K4096-top2-fp8_w8a8,E128-N384-K2048-top8-bf16"
DEFAULT_BATCHES = "1,16,64,256,512,1024,2048,4096"
LARGE_M = 256  # where the large tiles are tried


def tma_variants(base: dict) -> dict[str, dict]:
    """The base config with each TMA mode on the up and the down GEMM."""
    six = dict(base)  # the engines' six parameters (a vLLM file's entry, or the six-parameter default)
    return {
        "tma1": dict(six, TMA=1),
        "tma2": dict(six, TMA=2),
        "up1-dn2": {"up": dict(six, TMA=1), "down": dict(six, TMA=2)},
        "up0-dn2": {"up": dict(six, TMA=0), "down": dict(six, TMA=2)},
    }


def large_tiles(block_k: int) -> dict[str, dict]:
    tiles = {
        "L128x256w8s3": dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=8, num_warps=8,
                             num_stages=3),
        "L128x256w8s4": dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=256, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=8, num_warps=8,
                             num_stages=4),
        "L128x128w4s4": dict(BLOCK_SIZE_M=128, BLOCK_SIZE_N=128, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=8, num_warps=4,
                             num_stages=4),
        "L64x256w4s4": dict(BLOCK_SIZE_M=64, BLOCK_SIZE_N=256, BLOCK_SIZE_K=block_k, GROUP_SIZE_M=8, num_warps=4,
                            num_stages=4),
    }
    out = {}
    for name, cfg in tiles.items():
        out[name] = cfg
        out[name + "-tma2"] = dict(cfg, TMA=2)
    return out


def down_tiles(base: dict) -> dict[str, dict]:
    """Down-GEMM tiles beside the base's up GEMM (same BLOCK_SIZE_M, GROUP_SIZE_M and TMA). ``base`` is
    {"up": .., "down": ..}."""
    up, down = base["up"], base["down"]
    out = {}
    for bn in (64, 128, 256):
        for bk in (64, 128):
            for warps, stages in ((4, 3), (8, 4)):
                tile = dict(down, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk, num_warps=warps, num_stages=stages, SPLIT_K=1)
                if all(tile[p] == down[p] for p in ("BLOCK_SIZE_N", "BLOCK_SIZE_K", "num_warps", "num_stages")):
                    continue
                out[f"dn{bn}x{bk}w{warps}s{stages}"] = {"up": up, "down": tile}
    return out


def persistent_variants(base: dict) -> dict[str, dict]:
    """The base ({"up": .., "down": ..}) with persistent GEMMs: both, either alone, and both with each GROUP_SIZE_M."""
    up, down = base["up"], base["down"]
    out = {"pers": {"up": dict(up, PERSISTENT=1), "down": dict(down, PERSISTENT=1)},
           "pers-up": {"up": dict(up, PERSISTENT=1), "down": down},
           "pers-down": {"up": up, "down": dict(down, PERSISTENT=1)}}
    for group in (1, 8, 16, 32, 64):
        if group != up["GROUP_SIZE_M"]:
            out[f"pers-g{group}"] = {"up": dict(up, PERSISTENT=1, GROUP_SIZE_M=group),
                                     "down": dict(down, PERSISTENT=1, GROUP_SIZE_M=group)}
    return out


def tail_variants(base: dict) -> dict[str, dict]:
    """The base ({"up": .., "down": ..}) with HALF_TAIL on both GEMMs, on either alone (a persistent down GEMM made
    one program per tile: they exclude each other), and on both at the other of 64 and 128 rows per block (the
    alignment feeds both GEMMs, so they share BLOCK_SIZE_M). Nothing for blocks under 32 rows."""
    up, down = base["up"], base["down"]
    if up["BLOCK_SIZE_M"] < 32:
        return {}
    tail_up, tail_down = dict(up, HALF_TAIL=1), dict(down, HALF_TAIL=1, PERSISTENT=0)
    out = {"tail": {"up": tail_up, "down": tail_down}, "tail-up": {"up": tail_up, "down": down},
           "tail-down": {"up": up, "down": tail_down}}
    other = {64: 128, 128: 64}.get(up["BLOCK_SIZE_M"])
    if other:
        out[f"tail-m{other}"] = {"up": dict(tail_up, BLOCK_SIZE_M=other), "down": dict(tail_down, BLOCK_SIZE_M=other)}
    return out


#: The pdl probe's variant: the base config, its runner launching without PDL.
NO_PDL = "no-pdl"


def without_pdl(run):
    """A runner whose kernels launch without PDL (also when a CUDA graph captures it)."""
    from moekernel.kernel import pdl

    def call():
        with pdl.forced(False):
            return run()
    return call


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", default=DEFAULT_KEYS)
    parser.add_argument("--batch-sizes", default=DEFAULT_BATCHES)
    parser.add_argument("--probe", choices=("tma", "down", "persistent", "tail", "pdl", "same"), default="tma")
    parser.add_argument("--configs", default="benchmarks/vllm-h200-configs", help="vLLM's files (--probe tma)")
    parser.add_argument("--own", default="benchmarks/tuned-h200-tma",
                        help="moekernel's own files (--probe down, persistent, tail, pdl, same)")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the base config's up and down GEMMs alone (the rest of a call: alignment, "
                             "top-k sum, quantization launches)")
    parser.add_argument("--skip-variants", action="store_true", help="time the base config only")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import torch

    from moekernel.configs import load_configs, nearest_batch_size
    from moekernel.heuristics import default_config
    from moekernel.kernel.moe import normalize_config
    from moekernel.kernel.moe import make_runner
    from moekernel.kernel.reference import relative_error
    from moekernel.kernel.testing import make_inputs, redraw
    from moekernel.kernel.timing import time_callable, time_interleaved
    from moekernel.roofline import KNOWN_CEILINGS, expected_hit_experts, floor_us
    from moekernel.shapes import KernelShape
    from moekernel.tuning.compile import compile_configs

    ceilings = KNOWN_CEILINGS["NVIDIA_H200"]
    # Without a GPU (TRITON_INTERPRET=1) it runs in the interpreter, to check the script itself on tiny keys.
    device, backend = ("cuda", "cuda") if torch.cuda.is_available() else ("cpu", "interpret")
    batch_sizes = [int(m) for m in args.batch_sizes.split(",")]
    results = []
    for key in args.keys.split(","):
        shape = KernelShape.from_key(key)
        own = args.probe != "tma"
        files = load_configs(shape.E, shape.N, shape.config_dtype, shape.block_shape, "NVIDIA_H200",
                             folders=[args.own if own else args.configs], fallback=False, extended=own)
        plan = {}
        for M in batch_sizes:
            if files:
                base, origin = files[nearest_batch_size(files, M)], "own-file" if own else "vllm-h200"
            else:
                base, origin = default_config(M, shape.E, shape.N, shape.K, shape.topk, shape.config_dtype,
                                              shape.block_shape, extended=own), "default"
            if own:
                base = dict(zip(("up", "down"), normalize_config(base)))
            variants = {"base": base}
            if args.skip_variants:
                pass
            elif args.probe == "down":
                variants.update(down_tiles(base))
            elif args.probe == "persistent":
                variants.update(persistent_variants(base))
            elif args.probe == "tail":
                variants.update(tail_variants(base))
            elif args.probe == "pdl":
                variants[NO_PDL] = base
            elif args.probe == "same":
                variants.update({"same-1": base, "same-2": base})
            else:
                variants.update(tma_variants(dict(base)))
                if M >= LARGE_M:
                    variants.update(large_tiles(128 if shape.info.weight_bytes == 1 else 64))
            plan[M] = (origin, variants)
        todo = {json.dumps(c, sort_keys=True): c for _, vs in plan.values() for c in vs.values()}
        t0 = time.monotonic()
        scopes = ("both", "up", "down") if args.breakdown else ("both",)
        compiled = compile_configs(shape, batch_sizes[0], [(c, g) for c in todo.values() for g in scopes], jobs=16)
        compiled = compiled[::len(scopes)]  # a config fails alike in every scope
        failed = {k for k, r in zip(todo, compiled) if r.status != "ok"}
        print(f"# {key}: compiled {len(todo)} configs in {time.monotonic() - t0:.0f} s, {len(failed)} failed",
              flush=True)
        for M in batch_sizes:
            origin, variants = plan[M]
            inputs = make_inputs(shape, M, seed=M, device=device)
            # 8-bit activations: another accumulation order can flip the intermediate's quantization of a value.
            tolerance = 4e-2 if shape.info.act_bytes == 1 else 2e-2
            floor = floor_us(shape, M, expected_hit_experts(shape, M), ceilings)
            times: dict[str, list[float]] = {}
            errors: dict[str, str] = {}
            for draw in range(args.draws):
                if draw:
                    inputs = redraw(inputs, shape, M, seed=M, draw=draw)
                base_out, runs = None, {}
                for name, cfg in variants.items():
                    if json.dumps(cfg, sort_keys=True) in failed or name in errors:
                        errors.setdefault(name, "compile failed")
                        continue
                    try:
                        run = make_runner(inputs, cfg)
                        if name == NO_PDL:
                            run = without_pdl(run)
                        out = run().clone()
                        if base_out is None:
                            base_out = out
                        elif (err := relative_error(out, base_out)) > tolerance:
                            errors[name] = f"differs from base by {err:.2e}"
                            continue
                        runs[name] = run
                    except Exception as exc:  # noqa: BLE001 - a probe records what fails and goes on
                        errors[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    if backend == "cuda":
                        torch.cuda.synchronize()
                # The variants take turns, so that the card's clock drift lands on all of them alike.
                for name, timing in zip(runs, time_interleaved(list(runs.values()), iters=args.iters,
                                                               backend=backend)):
                    if isinstance(timing, Exception):
                        errors[name] = f"{type(timing).__name__}: {str(timing)[:200]}"
                    else:
                        times.setdefault(name, []).append(timing.median_us)
                del runs
                if args.breakdown and "base" in times:
                    for gemm in ("up", "down"):
                        run = make_runner(inputs, variants["base"], gemm=gemm)
                        times.setdefault(f"base-{gemm}", []).append(
                            time_callable(run, iters=args.iters, backend=backend).median_us)
            mean = {n: sum(t) / len(t) for n, t in times.items() if len(t) == args.draws}
            base_us = mean.get("base")
            whole = {n: t for n, t in mean.items() if not n.startswith("base-")}
            best = min(whole, key=whole.get) if whole else None
            row = {"key": key, "M": M, "origin": origin, "floor_us": floor, "base_us": base_us, "mean_us": mean,
                   "errors": errors, "best": best, "configs": variants}
            results.append(row)
            if base_us is None:
                print(f"{key} M={M} base({origin}) failed: {errors}", flush=True)
                continue
            speed = " ".join(f"{n}={base_us / t:.3f}" for n, t in whole.items() if n != "base")
            if args.breakdown and "base-up" in mean:
                rest = base_us - mean["base-up"] - mean["base-down"]
                speed += f" | up {mean['base-up']:.1f} us, down {mean['base-down']:.1f} us, rest {rest:.1f} us"
            print(f"{key} M={M} base({origin}) {base_us:.1f} us frac {floor / base_us:.2f} | best {best} "
                  f"{mean[best]:.1f} us frac {floor / mean[best]:.2f} | {speed}"
                  + (f" | errors {errors}" if errors else ""), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
