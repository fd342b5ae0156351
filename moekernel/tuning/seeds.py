"""Where a fast search starts: the best configs already measured nearby, else the default rule's neighbourhood."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..shapes import KernelShape
from . import shard as shard_io
from .space import PARAMS, Candidate


def seeds_from_shard(path, shape: KernelShape, scopes: Sequence[str], top: int = 3) -> set[Candidate]:
    """The winners and the ``top`` fastest finalists of each gemm scope of a shard of the same key.

    A seed from a ``both`` shard seeds the up and down GEMMs of a split job and vice versa.
    """
    if not Path(path).is_file():
        raise ValueError(f"--seed-from {path}: no such shard")
    try:
        frame = shard_io.to_frame(shard_io.read_shard(path))
    except (OSError, ValueError) as exc:  # pyarrow's errors for a file that is not Parquet derive from these
        raise ValueError(f"--seed-from {path}: not a readable shard ({exc})") from None
    if not (frame["key"] == shape.key).all():
        raise ValueError(f"--seed-from {path}: not a shard of {shape.key}")
    seeds = set()
    ok = frame[frame["status"] == "ok"]
    for gemm, part in ok.groupby("gemm"):
        final = part[part["iters"] == part["iters"].max()].nsmallest(top, "time_us")
        picks = pd.concat([part[part["winner"]], final])
        targets = [gemm] if gemm in scopes else list(scopes)
        for row in picks[list(PARAMS)].itertuples(index=False):
            seeds.update(Candidate(tuple(int(v) for v in row), t) for t in targets)
    return seeds


def heuristic_seeds(shape: KernelShape, M: int, space, scopes: Sequence[str]) -> set[Candidate]:
    """Seeds for a fast job with no neighbouring shard: the default rule at M and at the neighbouring regimes
    (M/4, 4M), and the engines' default, each snapped onto the search space."""
    from ..heuristics import default_config, engine_default_config

    args = (shape.E, shape.N, shape.K, shape.topk, shape.quant_dtype, shape.block_shape)
    configs = [default_config(max(1, m), *args) for m in (M // 4, M, 4 * M)]
    configs.append(engine_default_config(M, *args))
    seeds = set()
    for config in configs:
        snapped = tuple(min(space[p], key=lambda v: (abs(math.log2(v) - math.log2(config[p])), v)) for p in PARAMS)
        seeds.update(Candidate(snapped, gemm) for gemm in scopes)
    return seeds
