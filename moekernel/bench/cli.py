"""The benchmark's command line (``python -m moekernel.bench``; the package docstring says what it measures)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from ..configs import STANDARD_BATCH_SIZES
from ..configs import device_name as current_device_name
from ..backend import INTERPRETER_EXAMPLE_KEY, command_backend, interpreter_size_problem
from ..shapes import DTYPES, KernelShape

DEFAULT_KEY = "E8-N7168-K4096-top2-bf16"  # Mixtral-8x7B at tp=2
INTERPRETER_BANNER = (
    "#" * 100 + "\n"
    "# NO CUDA: the kernels ran in Triton's CPU interpreter. The times below are interpreter times and say\n"
    "# nothing about GPU speed; ceilings were not measured, so roofline fractions are n/a (or meaningless,\n"
    "# if --bandwidth/--peak were given). Run on a GPU for real numbers.\n"
    + "#" * 100
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moekernel.bench", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("shape (default: Mixtral-8x7B tp=2, " + DEFAULT_KEY + ")")
    g.add_argument("--key", help="kernel key, e.g. E8-N7168-K4096-top2-bf16 (instead of --E/--N/--K/--topk/--dtype)")
    g.add_argument("--E", type=int, help="experts (default 8)")
    g.add_argument("--N", type=int, help="expert intermediate size per GPU (default 7168)")
    g.add_argument("--K", type=int, help="hidden size (default 4096)")
    g.add_argument("--topk", type=int, help="experts per token (default 2)")
    g.add_argument("--dtype", choices=DTYPES, help="default bf16")
    g.add_argument("--block-shape", help="block quantization bn,bk, e.g. 128,128")
    p.add_argument("--batch-sizes", default=",".join(map(str, STANDARD_BATCH_SIZES)),
                   help="comma-separated M (default: the 18 standard sizes, 1 to 4096)")
    p.add_argument("--configs", action="append", default=[], metavar="DIR",
                   help="a folder of engine config files to compare (repeatable)")
    p.add_argument("--tuned", action="append", default=[], metavar="DIR", help="same as --configs, labelled tuned")
    p.add_argument("--device-name", help="device name for config file lookup (default: this device's)")
    p.add_argument("--iters", type=int, default=20, help="timed CUDA-graph replays per measurement (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    p.add_argument("--routing", default="uniform", help="uniform (default), zipf:<s>, or a .npy/.pt file of top-k ids")
    p.add_argument("--skip-torch", action="store_true", help="no torch baseline")
    p.add_argument("--json", metavar="OUT", help="write every number to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for BENCHMARKS.md)")
    c = p.add_argument_group("ceilings")
    c.add_argument("--no-ceilings", action="store_true", help="measure no ceiling; use the values given below")
    c.add_argument("--bandwidth", type=float, metavar="TB/s", help="memory bandwidth (skips its measurement)")
    c.add_argument("--peak", type=float, metavar="TFLOP/s", help="bf16 matmul rate (skips its measurement)")
    c.add_argument("--peak-fp8", type=float, metavar="TFLOP/s", help="fp8 matmul rate (skips its measurement)")
    c.add_argument("--copy-gib", type=float, default=2.0, help="GiB of the copied tensor (default: 2)")
    c.add_argument("--read-gib", type=float, default=4.0, help="GiB of the summed tensor (default: 4)")
    c.add_argument("--matmul-size", type=int, default=8192, help="n of the n×n×n matmuls (default: 8192)")
    return p


def shape_from_args(args) -> KernelShape:
    explicit = [f"--{n.replace('_', '-')}" for n in ("E", "N", "K", "topk", "dtype", "block_shape")
                if getattr(args, n) is not None]
    if args.key:
        if explicit:
            raise ValueError(f"--key excludes {', '.join(explicit)}")
        return KernelShape.from_key(args.key)
    block = None
    if args.block_shape:
        try:
            block = tuple(int(v) for v in args.block_shape.replace("x", ",").split(","))
        except ValueError:
            raise ValueError(f"--block-shape {args.block_shape!r}: expected bn,bk e.g. 128,128") from None
    d = KernelShape.from_key(DEFAULT_KEY)
    pick = lambda v, default: default if v is None else v  # noqa: E731
    return KernelShape(pick(args.E, d.E), pick(args.N, d.N), pick(args.K, d.K), pick(args.topk, d.topk),
                       pick(args.dtype, d.dtype), block)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--batch-sizes {text!r}: expected comma-separated integers") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes {text!r}: expected positive integers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shape = shape_from_args(args)
        batch_sizes = parse_batch_sizes(args.batch_sizes)
        if args.iters < 1:
            raise ValueError("--iters must be >= 1")
    except ValueError as exc:
        parser.error(str(exc))
    backend = command_backend("auto", "moekernel.bench", restart=argv is None)
    interpreter = backend != "cuda"
    too_large = interpreter_size_problem(shape) if interpreter else None
    if too_large:
        parser.error(f"no CUDA device, and {too_large}; try --key {INTERPRETER_EXAMPLE_KEY} --batch-sizes 1,8")

    import torch
    import triton

    from .. import __version__
    from .ceilings import get_ceilings
    from .run import bench
    from .sources import build_sources
    from .table import format_legend, format_summary, format_table, summarize

    device = torch.cuda.get_device_name() if not interpreter else "cpu (Triton interpreter)"
    lookup_name = args.device_name or current_device_name()
    say = lambda text="": print(text, flush=True)  # noqa: E731
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    if interpreter:
        say(INTERPRETER_BANNER)
    try:
        sources = build_sources(args, shape, lookup_name)
    except ValueError as exc:
        parser.error(str(exc))
    say(f"moekernel.bench {shape.key} on {device}: torch {torch.__version__}, triton {triton.__version__}, "
        f"routing {args.routing}, seed {args.seed}")
    for src in sources:
        if src.kind == "file":
            say(f"{src.name}: {src.note}")
    ceilings = get_ceilings(args, backend)
    say(f"ceilings: {ceilings.describe()}")
    for note in ceilings.notes:
        say(f"  {note}")
    if shape.dtype == "int8_w8a8":
        say("  int8_w8a8: the fp8 matmul rate stands in for the tensor cores' int8 rate")

    try:
        rows = bench(shape, batch_sizes, sources, ceilings, backend=backend, iters=args.iters, seed=args.seed,
                     routing=args.routing, log=progress)
    except ValueError as exc:  # bad --routing file and the like: the inputs could not be made
        print(f"moekernel.bench: error: {exc}", file=sys.stderr)
        return 2
    summary = summarize(rows, sources)
    say()
    say(format_table(rows, sources, markdown=args.markdown))
    say(format_legend(sources, rows))
    say()
    say(format_summary(summary, sources))
    if interpreter:
        say(INTERPRETER_BANNER)

    if args.json:
        report = {
            "key": shape.key,
            "shape": {"E": shape.E, "N": shape.N, "K": shape.K, "topk": shape.topk, "dtype": shape.dtype,
                      "block_shape": list(shape.block_shape) if shape.block_shape else None},
            "device": device, "device_name": lookup_name, "backend": backend, "interpreter": interpreter,
            "torch_version": torch.__version__, "triton_version": triton.__version__,
            "moekernel_version": __version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "batch_sizes": batch_sizes, "routing": args.routing, "seed": args.seed, "iters": args.iters,
            "ceilings": ceilings.to_json(), "sources": [s.to_json() for s in sources], "rows": rows,
            "summary": summary, "argv": sys.argv[1:] if argv is None else list(argv),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")  # a killed run leaves no truncated report under the real name
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, path)
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

