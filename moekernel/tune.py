"""``python -m moekernel.tune``: tune one kernel shape at one batch size on one device into one Parquet shard.

    python -m moekernel.tune --key E8-N7168-K4096-top2-bf16 --batch-size 64 --out results/timings/KEY/bs64.parquet

Several batch sizes (``--batch-size 1,64,1024``, or ``standard`` for the 18 the engines' files cover) run one after
the other in this process, one shard each (``--out`` with ``{batch_size}`` in it); a shard already written is kept
and that batch size skipped, so the same command resumes an interrupted run.

Exit status: 0 when the shard is written, 75 when a CUDA error broke the process's context (the checkpoint is
saved: run the same command again to resume), 2 for bad arguments, 1 for anything else.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    from .tuning.settings import TuneSettings

    p = argparse.ArgumentParser(prog="python -m moekernel.tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--key", required=True, help="kernel key, e.g. E8-N7168-K4096-top2-bf16")
    p.add_argument("--batch-size", type=batch_sizes, required=True,
                   help="M, the tokens of one call; several comma-separated, or 'standard' (the 18 sizes 1-4096)")
    p.add_argument("--out", help="the shard to write (.parquet; with several batch sizes, a path holding "
                   "{batch_size}); <out>.partial is its checkpoint")
    TuneSettings.add_cli_arguments(p)
    p.add_argument("--jobs", type=positive_int, default=None, help="compile workers (1: compile in this process); "
                   "default: min(16, CPUs available)")
    p.add_argument("--seed-from", nargs="+", action="extend", default=[], metavar="SHARD",
                   help="shards of the same key at other batch sizes whose best configs seed the fast strategy")
    p.add_argument("--seed-keys", metavar="DIR",
                   help="a folder of other keys' shards (DIR/<key>/bs<M>.parquet): without --seed-from, the nearest "
                        "key's shard at the same batch size seeds the fast strategy")
    p.add_argument("--compile-only", action="store_true",
                   help="only fill Triton's cache with the candidates of this batch size (of several, the largest; "
                        "give the shape's largest: its candidates include every smaller one's), so the shape's tune "
                        "jobs compile nothing; no shard")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the summary line is still printed)")
    return p


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def batch_sizes(text: str) -> list[int]:
    """``64``, ``1,64,1024`` or ``standard``: the sorted batch sizes."""
    from .configs import STANDARD_BATCH_SIZES

    if text.strip() == "standard":
        return list(STANDARD_BATCH_SIZES)
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a batch size, comma-separated batch sizes (1,64,1024) or 'standard'") from None
    if sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes are token counts, at least 1")
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backend import command_backend
    from .shapes import KernelShape
    from .tuning import TuneSettings
    from .tuning.tuner import interpreter_refusal, shard_paths

    try:  # fail fast, before anything is measured (tune_batch_sizes checks that every --out can be written)
        shape = KernelShape.from_key(args.key)
        settings = TuneSettings.from_cli(args)
        settings.check_fits(shape)
        if args.out is None and not args.compile_only:
            raise ValueError("--out is required (unless --compile-only)")
        shard_paths(args.out, args.batch_size)
        requested = settings.backend
        settings = settings.replace(backend=command_backend(requested, "moekernel.tune", restart=argv is None))
        refusal = None if args.compile_only else interpreter_refusal(shape, args.batch_size, requested,
                                                                     settings.backend)
        if refusal:
            raise ValueError(refusal)
    except ValueError as exc:
        print(f"moekernel.tune: error: {exc}", file=sys.stderr)
        return 2
    if args.compile_only:
        return _compile_only(args, settings)

    return run(args.key, args.batch_size, settings, out=args.out, jobs=args.jobs, seed_from=args.seed_from,
               seed_keys=args.seed_keys, quiet=args.quiet)


def run(key: str, batch_sizes: list[int], settings, *, out, jobs: int | None, seed_from=(), seed_keys=None,
        quiet: bool) -> int:
    """Tune ``key`` at ``batch_sizes`` in this process, as the command does (also the pipeline's tune job): the
    exit status above, a summary line per batch size on stderr, and a checkpoint written when SIGTERM arrives."""
    from .tuning import EXIT_RESUME, ContextPoisoned, tune_batch_sizes

    # A cancelled job (Snakemake, Slurm) gets SIGTERM: unwind, so the checkpoint is written on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start = time.monotonic()
    try:
        frames = tune_batch_sizes(key, batch_sizes, settings, out=out, jobs=jobs, seed_from=seed_from,
                                  seed_keys=seed_keys, progress=not quiet)
    except ContextPoisoned as exc:
        print(f"moekernel.tune: {exc}", file=sys.stderr)
        return EXIT_RESUME
    except ValueError as exc:  # bad routing file, seed shard, unwritable --out...: say what, without a traceback
        print(f"moekernel.tune: error: {exc}", file=sys.stderr)
        return 2
    if quiet:
        for frame in frames.values():
            print(frame.attrs["summary"], file=sys.stderr)
    if len(frames) > 1:
        print(f"{key}: {len(frames)} batch sizes in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0


def _compile_only(args, settings) -> int:
    from .tuning import precompile

    start = time.monotonic()
    frame = precompile(args.key, max(args.batch_size), settings, jobs=args.jobs, progress=not args.quiet)
    counts = ", ".join(f"{n} {status}" for status, n in frame["status"].value_counts().items()) or "nothing to do"
    print(f"{args.key}: compiled {len(frame)} candidates ({counts}) in {time.monotonic() - start:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
