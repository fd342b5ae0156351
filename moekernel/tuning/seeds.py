"""Where a fast search starts: the best configs already measured nearby, else the default rule's neighbourhood.

Nearby means, in order: shards of the same key at other batch sizes (``--seed-from``), then the same batch size of
the nearest key already tuned on this device (``--seed-keys``: same dtype and quantization, nearest E, N, K and
top-k). Seeds centre the fast strategy's search (moekernel.tuning.strategies.Fast.radius), so good seeds mean
fewer candidates compiled and timed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..shapes import KernelShape
from . import shard as shard_io
from .space import PARAMS, Candidate


def seeds_from_shard(path, shape: KernelShape | None, scopes: Sequence[str], top: int = 3) -> set[Candidate]:
    """The winners and the ``top`` fastest finalists of each gemm scope of a shard of the same key (``shape``; None:
    any key).

    A seed from a ``both`` shard seeds the up and down GEMMs of a split job and vice versa.
    """
    if not Path(path).is_file():
        raise ValueError(f"--seed-from {path}: no such shard")
    try:
        frame = shard_io.to_frame(shard_io.read_shard(path))
    except (OSError, ValueError) as exc:  # pyarrow's errors for a file that is not Parquet derive from these
        raise ValueError(f"--seed-from {path}: not a readable shard ({exc})") from None
    if shape is not None and not (frame["key"] == shape.key).all():
        raise ValueError(f"--seed-from {path}: not a shard of {shape.key}")
    seeds = set()
    # The engines' search only: a variant with moekernel's own parameters repeats a finalist's six.
    ok = frame[(frame["status"] == "ok") & ~shard_io.extended_rows(frame)]
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


def _distance(a: KernelShape, b: KernelShape) -> float:
    """How far apart two shapes are for tuning purposes: summed |log2| ratios of E, N, K and top-k."""
    return sum(abs(math.log2(getattr(a, f) / getattr(b, f))) for f in ("E", "N", "K", "topk"))


def nearest_key_shard(folder, shape: KernelShape, M: int) -> Path | None:
    """The shard at batch size M of the nearest other key under ``folder`` (``folder/<key>/bs<M>.parquet``, as the
    pipeline lays them out): same dtype and quantization layout, nearest E, N, K and top-k; None if there is none."""
    found = []
    for path in Path(folder).glob(f"*/bs{M}.parquet"):
        try:
            other = KernelShape.from_key(path.parent.name)
        except ValueError:
            continue
        if other.key == shape.key or (other.dtype, other.block_shape, other.per_channel) != (
                shape.dtype, shape.block_shape, shape.per_channel):
            continue
        found.append((_distance(shape, other), other.key, path))
    return min(found)[2] if found else None


def seeds_from_other_key(path, scopes: Sequence[str], top: int = 3) -> set[Candidate]:
    """:func:`seeds_from_shard` for a shard of another key (its launch configs seed this key's search)."""
    return seeds_from_shard(path, None, scopes, top)
