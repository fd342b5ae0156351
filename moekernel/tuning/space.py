"""The search space of launch configs, and pruning before anything is compiled.

A candidate is a dict of the six engine parameters (:data:`PARAMS`). :func:`prune` gives every candidate either
``None`` (time it) or the reason it cannot run or cannot matter; pruned candidates are still recorded in the shard,
so a reader can see why a config was never timed.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from .. import launch_params
from ..heuristics import HOPPER_SMEM_BYTES, HOPPER_SMS, MIN_SPLIT_K_STEPS, default_config, down_grid, is_split
from ..launch_params import DOWN_ONLY_PARAMS, EXTENDED_PARAMS, PARAMS, TMA_BOTH, TMA_WEIGHTS, tma_problem
from ..shapes import KernelShape


#: The space the engines' tuning scripts sweep: 5 * 4 * 3 * 4 * 2 * 4 = 1,920 configs.
VLLM_SPACE: dict[str, list[int]] = {
    "BLOCK_SIZE_M": [16, 32, 64, 128, 256],
    "BLOCK_SIZE_N": [32, 64, 128, 256],
    "BLOCK_SIZE_K": [64, 128, 256],
    "GROUP_SIZE_M": [1, 16, 32, 64],
    "num_warps": [4, 8],
    "num_stages": [2, 3, 4, 5],
}



def load_space(spec: str | Mapping[str, Iterable[int]] = "vllm", scopes: Sequence[str] = ("both",)
               ) -> dict[str, list[int]]:
    """``"vllm"``, a mapping of parameter -> values, a JSON object text, or the path of a JSON file.

    Parameters the mapping leaves out keep the vLLM lists, so ``{"num_stages": [3]}`` narrows one axis. Every value
    is checked against the kernel's rules (``moekernel.launch_params``) for the gemm ``scopes`` the space is tuned
    for: a value no scope can launch is an error naming the parameter and what is allowed, as is a parameter that
    leaves a scope no value at all. (A value that suits one scope of a split search and not the other, such as
    BLOCK_SIZE_N=16 for the down GEMM alone, is kept and pruned, with the reason, where it cannot run.)
    """
    if isinstance(spec, str):
        if spec == "vllm":
            return {k: list(v) for k, v in VLLM_SPACE.items()}
        text = spec
        if not spec.lstrip().startswith("{"):
            if not os.path.isfile(spec):
                raise ValueError(f"--space must be 'vllm', a JSON object or an existing JSON file; got {spec!r}")
            with open(spec) as f:
                text = f.read()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--space must be 'vllm', a JSON object or a JSON file: {err}") from None
    if not isinstance(spec, Mapping):
        raise ValueError(f"a search space maps parameter names to lists, got {type(spec).__name__}")
    unknown = set(spec) - set(PARAMS)
    if unknown:
        raise ValueError(f"unknown search-space parameter(s) {sorted(unknown)}; known: {', '.join(PARAMS)}")
    space = {k: list(v) for k, v in VLLM_SPACE.items()}
    for name, values in spec.items():
        values = [values] if isinstance(values, int) else list(values)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"search space {name} must be a non-empty list of integers, got {values!r}")
        space[name] = sorted(set(values))
        _check_values(name, space[name], scopes)
    return space


def _check_values(name: str, values: list[int], scopes: Sequence[str]) -> None:
    usable = {gemm: [v for v in values if launch_params.rules(gemm)[name].allows(v)] for gemm in scopes}
    refused = [v for v in values if not any(v in kept for kept in usable.values())]
    if refused:
        rule = launch_params.rules("down" if "down" in scopes else scopes[0])[name]  # the loosest of the scopes
        down_only = [v for v in refused if "down" not in scopes and launch_params.rules("down")[name].allows(v)]
        hint = (f"; {', '.join(map(str, down_only))} would suit the down GEMM alone, in a split search (split: true)"
                if down_only else "")
        raise ValueError(f"search space {name}: {', '.join(map(str, refused))} not allowed; {name} must be "
                         f"{rule.describe()}{hint}")
    for gemm, kept in usable.items():
        if not kept:
            raise ValueError(f"search space {name}: none of {', '.join(map(str, values))} suits the {gemm} GEMM, "
                             f"which needs {launch_params.rules(gemm)[name].describe()}")


def shape_problem(shape: KernelShape, space: Mapping[str, list[int]]) -> str | None:
    """Why ``space`` cannot tune ``shape`` at all (every candidate would be pruned), or None.

    Block-quantized weights need a BLOCK_SIZE_K that divides the quantization block's k; a space with none such
    would prune every config, which is better said before the job than found in its shard."""
    if shape.block_shape is None:
        return None
    block_k = shape.block_shape[1]
    if any(launch_params.block_k_problem(v, block_k) is None for v in space["BLOCK_SIZE_K"]):
        return None
    fits = launch_params.block_k_choices(block_k)
    return (f"{shape.key}: no BLOCK_SIZE_K of the search space ({', '.join(map(str, space['BLOCK_SIZE_K']))}) "
            f"divides the k={block_k} of its quantization block {shape.block_shape[0]}x{block_k}, so every "
            f"candidate would be pruned; add one of {', '.join(map(str, fits))} to BLOCK_SIZE_K")


def expand(space: Mapping[str, list[int]]) -> list[dict[str, int]]:
    """Every combination, in a fixed order (the order rows appear in a shard)."""
    return [dict(zip(PARAMS, values)) for values in itertools.product(*(space[p] for p in PARAMS))]


def config_id(config: Mapping[str, int]) -> tuple[int, ...]:
    """A hashable identity of a config."""
    return tuple(int(config[p]) for p in PARAMS)


#: moekernel's own parameters at their defaults (the engines' kernel), in EXTENDED_PARAMS order.
ENGINE_EXTENDED = tuple(EXTENDED_PARAMS.values())


def extended_id(config: Mapping[str, int]) -> tuple[int, ...]:
    """moekernel's own parameters of a config, in EXTENDED_PARAMS order; a missing (or null) one is its default."""
    return tuple(int(default if config.get(p) is None else config[p]) for p, default in EXTENDED_PARAMS.items())


def config_str(config: Mapping[str, int]) -> str:
    """Short text for messages: ``M64 N128 K64 G1 w4 s3``, then moekernel's own parameters off their defaults
    (`` SPLIT_K=4 TMA=2``)."""
    text = "M{} N{} K{} G{} w{} s{}".format(*config_id(config))
    own = [f"{p}={v}" for (p, default), v in zip(EXTENDED_PARAMS.items(), extended_id(config)) if v != default]
    return " ".join([text, *own])


class Candidate(NamedTuple):
    """One thing the tuner times: a config (its six engine parameters by id, and moekernel's own parameters)
    driving one gemm scope (both, up or down). The engines' search leaves ``extended`` at ENGINE_EXTENDED."""

    cid: tuple[int, ...]
    gemm: str
    extended: tuple[int, ...] = ENGINE_EXTENDED

    @classmethod
    def of(cls, config: Mapping[str, int], gemm: str) -> "Candidate":
        return cls(config_id(config), gemm, extended_id(config))

    @property
    def config(self) -> dict[str, int]:
        config = dict(zip(PARAMS, self.cid))
        config.update({p: v for (p, default), v in zip(EXTENDED_PARAMS.items(), self.extended) if v != default})
        return config

    def __str__(self) -> str:
        return f"{config_str(self.config)} ({self.gemm})"


# ---------------------------------------------------------------------------------------------------------------
# moekernel's own parameters, searched around the engine winner

#: The SPLIT_K values the tuner tries on an engine winner's down GEMM (moekernel.launch_params.EXTENDED_PARAMS).
SPLIT_K_CHOICES = (2, 4, 8)
#: The TMA modes the tuner tries on the engine finalists (moekernel.launch_params: weights, weights and activations).
TMA_CHOICES = (TMA_WEIGHTS, TMA_BOTH)


def split_k_reason(shape: KernelShape, M: int, config: Mapping[str, int], split: int) -> str | None:
    """Why SPLIT_K=``split`` on the down GEMM ``config`` drives cannot pay, or None (time it).

    Split-K helps where the down GEMM's grid leaves SMs idle (one program per row block and column block: a few
    dozen at small M); it costs float32 atomics, a zero-fill launch and, past one wave, a second wave. So a split is
    pruned where the unsplit grid already fills the SMs, where it would need more than two waves, and where each
    part would reduce fewer than MIN_SPLIT_K_STEPS K steps."""
    programs, k_steps, _ = down_grid(M, shape.E, shape.N, shape.K, shape.topk, config)
    if programs >= HOPPER_SMS:
        return (f"SPLIT_K={split}: the down GEMM's ~{programs:.0f} programs already fill the {HOPPER_SMS} SMs; "
                "a split only adds atomics")
    if programs * split > 2 * HOPPER_SMS:
        return f"SPLIT_K={split}: ~{programs * split:.0f} programs, more than two waves of {HOPPER_SMS} SMs"
    if k_steps // split < MIN_SPLIT_K_STEPS:
        return (f"SPLIT_K={split}: {k_steps} K steps of BLOCK_SIZE_K={config['BLOCK_SIZE_K']} leave each part "
                f"fewer than {MIN_SPLIT_K_STEPS}")
    return None


def extended_variants(shape: KernelShape, M: int, config: Mapping[str, int], gemm: str, *, winner: bool = True
                      ) -> list[tuple[dict[str, int], str | None]]:
    """An engine finalist ``config`` with moekernel's own parameters, each with ``None`` (time it) or why not.

    Every finalist gets each of :data:`TMA_CHOICES` (pruned where the shape's rows cannot have a descriptor:
    :func:`moekernel.launch_params.tma_problem`): TMA changes how tiles load, so the best tile without it need not
    be the best with it. The winner (``winner=True``) also gets each of :data:`SPLIT_K_CHOICES` on the down GEMM
    it drives (pruned by :func:`split_k_reason`), alone and with each TMA mode."""
    facts = shape.info
    found = []
    splits = (1,) + (SPLIT_K_CHOICES if winner and gemm != "up" else ())
    for split in splits:
        split_reason = split_k_reason(shape, M, config, split) if split > 1 else None
        if split_reason:
            found.append((dict(config, SPLIT_K=split), split_reason))  # one row says why, for every TMA mode
            continue
        for tma in (0,) + TMA_CHOICES:
            if split == 1 and tma == 0:
                continue  # the finalist itself
            variant = dict(config, **({"SPLIT_K": split} if split > 1 else {}), **({"TMA": tma} if tma else {}))
            reason = tma_problem(tma, gemm, shape.N, shape.K, facts.act_bytes, facts.weight_bytes)
            found.append((variant, reason))
    return found


def persistent_variant(config: Mapping[str, int]) -> dict[str, int]:
    """A config driving the down GEMM with that GEMM persistent (PERSISTENT=1).

    Tried on the best config found so far rather than on every variant: it changes only how the down GEMM's
    programs walk their tiles, so it pays or not about equally whatever the tile. On the H200 it paid 1-4% where
    it did (Qwen3-30B-A3B at M >= 2048, Mixtral fp8 at M = 1 and 4096) and lost up to 13% elsewhere."""
    return dict(config, PERSISTENT=1)


def half_tail_variant(config: Mapping[str, int], gemm: str) -> tuple[dict[str, int], str | None]:
    """``config`` with half tiles for the row blocks that are half padding (HALF_TAIL=1), and ``None`` (time it) or
    why the kernel refuses it (blocks under 32 rows; a persistent down GEMM).

    Tried, like PERSISTENT, on the best config found so far: it changes only the last block of each expert's run.
    On the H200 it paid 1-5% at Mixtral M >= 256 (most with fp8, from 128-row blocks) and lost up to 5% with
    64-row blocks at M = 64-128 (BENCHMARKS.md, 2026-12-01 sixth session)."""
    variant = dict(config, HALF_TAIL=1)
    refused = launch_params.problems(variant, gemm)
    return variant, "; ".join(refused) if refused else None


def extended_default(shape: KernelShape, M: int) -> dict[str, int]:
    """moekernel's default with its own parameters (what its runtime falls back to without a file) as one config for
    both GEMMs: the extended search times it too, so moekernel's own file is never slower than having none."""
    config = default_config(M, shape.E, shape.N, shape.K, shape.topk, shape.config_dtype, shape.block_shape,
                            extended=True)
    if not is_split(config):
        return config
    # The default differs between the GEMMs only in down-only parameters (SPLIT_K): one dict says the same.
    return {**config["up"], **{p: config["down"][p] for p in DOWN_ONLY_PARAMS if p in config["down"]}}


# ---------------------------------------------------------------------------------------------------------------
# Shared memory


def device_smem_limit(backend: str, device=None) -> int:
    """Opt-in shared memory per block of the device, or the Hopper figure when it cannot be asked."""
    if backend != "cuda":
        return HOPPER_SMEM_BYTES
    import torch

    index = torch.device(device or "cuda").index
    index = torch.cuda.current_device() if index is None else index
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001 - driver API differs between triton versions; fall back below
        pass
    props = torch.cuda.get_device_properties(index)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or HOPPER_SMEM_BYTES)


def smem_bytes(shape: KernelShape, config: Mapping[str, int], gemm: str) -> int:
    """The kernel's own estimate of one launch's shared memory (``moekernel.kernel.moe.smem_bytes``)."""
    from ..kernel.moe import smem_bytes as kernel_estimate

    return int(kernel_estimate(shape, dict(config), gemm))


# ---------------------------------------------------------------------------------------------------------------
# Time in the interpreter

# Measured with Triton 3.9's interpreter on one x86 core: each (program, K step) of a GEMM costs about 1 ms plus
# 0.7 us per element of its three tiles (A, B and the accumulator); within a factor of two from 16x32x64 to 64x256x256.
_INTERPRETER_S_PER_STEP = 1e-3
_INTERPRETER_S_PER_TILE_ELEMENT = 7e-7


def interpreter_seconds(shape: KernelShape, M: int, config: Mapping[str, int]) -> float:
    """About how long one call of the whole op with ``config`` takes in Triton's CPU interpreter (for warnings)."""
    bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
    per_step = _INTERPRETER_S_PER_STEP + _INTERPRETER_S_PER_TILE_ELEMENT * (bm * bk + bk * bn + bm * bn)
    steps = 0
    for gemm in ("up", "down"):
        rows, cols = _grid(shape, M, config, gemm)
        steps += rows * cols * _cdiv(_gemm_dims(shape, gemm)[1], bk)
    return steps * per_step


def format_duration(seconds: float) -> str:
    """``40 s``, ``19 min``, ``5.2 h``, ``3.1 days``: a duration as a person reads it."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2g} {unit}" if seconds < 10 * size else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------------------------
# Pruning


def _gemm_dims(shape: KernelShape, gemm: str) -> tuple[int, int]:
    """(output width, reduction length) of one GEMM. The up GEMM's output is counted as 2N (gate and up) so the
    rules below never assume a narrower grid than the kernel may launch."""
    return (2 * shape.N, shape.K) if gemm == "up" else (shape.K, shape.N)


def _smallest_covering(values: Iterable[int], size: int) -> int | None:
    """The smallest value >= size (a tile that holds the whole extent), or None if no value does."""
    covering = [v for v in values if v >= size]
    return min(covering) if covering else None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _grid(shape: KernelShape, M: int, config: Mapping[str, int], gemm: str) -> tuple[int, int]:
    """Upper bound of the (rows, columns) of blocks a GEMM launches. Rows: the aligned token list is padded per
    expert to BLOCK_SIZE_M, so at most M*topk + E*(BM-1) entries. An over-estimate only makes fewer configs look
    alike, never more."""
    bm = config["BLOCK_SIZE_M"]
    rows = _cdiv(M * shape.topk + shape.E * (bm - 1), bm)
    return rows, _cdiv(_gemm_dims(shape, gemm)[0], config["BLOCK_SIZE_N"])


def _launch_key(shape: KernelShape, M: int, config: Mapping[str, int], gemms: tuple[str, ...]) -> tuple:
    """Configs with equal keys launch identically. GROUP_SIZE_M only reorders blocks in groups of rows: with one row
    or one column of blocks there is nothing to reorder, and every GROUP_SIZE_M >= the row count is one group."""
    group_effect = []
    for gemm in gemms:
        rows, cols = _grid(shape, M, config, gemm)
        group_effect.append(0 if rows == 1 or cols == 1 else min(config["GROUP_SIZE_M"], rows))
    others = tuple(config[p] for p in PARAMS if p != "GROUP_SIZE_M")
    return others + tuple(group_effect)


def block_quant_reason(shape: KernelShape, config: Mapping[str, int]) -> str | None:
    """Block-quantized weights: a K step must stay inside one scale block (``launch_params.block_k_problem``).
    BLOCK_SIZE_N is free: the kernel reads one scale per output column, so tiles and scale blocks need not line up
    along N."""
    if shape.block_shape is None:
        return None
    refused = launch_params.block_k_problem(config["BLOCK_SIZE_K"], shape.block_shape[1])
    return f"block quant: {refused}" if refused else None


def prune(
    shape: KernelShape,
    M: int,
    space: Mapping[str, list[int]],
    *,
    gemm: str = "both",
    smem_limit: int = HOPPER_SMEM_BYTES,
) -> list[tuple[dict[str, int], str | None]]:
    """Every config of ``space`` with ``None`` (keep) or the reason it is pruned for batch size ``M``.

    ``gemm="both"`` means the config drives both GEMMs, so a rule must hold for each of them.
    """
    gemms = ("up", "down") if gemm == "both" else (gemm,)
    # An expert receives at most M tokens (a token picks an expert once); a BLOCK_SIZE_M that already holds them
    # all leaves larger blocks nothing but padding: same number of blocks, more work each.
    bm_cap = _smallest_covering(space["BLOCK_SIZE_M"], M)
    # Likewise a tile wider than the output, or deeper than the reduction, of every GEMM it drives only masks.
    bn_cap = _smallest_covering(space["BLOCK_SIZE_N"], max(_gemm_dims(shape, g)[0] for g in gemms))
    bk_cap = _smallest_covering(space["BLOCK_SIZE_K"], max(_gemm_dims(shape, g)[1] for g in gemms))

    result: list[tuple[dict[str, int], str | None]] = []
    kept_by_launch: dict[tuple, dict[str, int]] = {}
    for config in expand(space):
        # A value one GEMM cannot launch (BLOCK_SIZE_N=16 for the up GEMM of a split search) is a row, not an error.
        refused = launch_params.problems(config, gemm)
        reason = f"kernel: {'; '.join(refused)}" if refused else block_quant_reason(shape, config)
        bm, bn, bk = config["BLOCK_SIZE_M"], config["BLOCK_SIZE_N"], config["BLOCK_SIZE_K"]
        if reason is None and bm_cap is not None and bm > bm_cap:
            reason = (
                f"BLOCK_SIZE_M={bm} > {bm_cap}: an expert gets at most M={M} tokens, which one {bm_cap}-row block "
                "already holds; larger blocks only add padding"
            )
        if reason is None and bn_cap is not None and bn > bn_cap:
            reason = f"BLOCK_SIZE_N={bn} > {bn_cap}, which already spans the output; larger tiles only mask"
        if reason is None and bk_cap is not None and bk > bk_cap:
            reason = f"BLOCK_SIZE_K={bk} > {bk_cap}, which already spans the reduction; larger tiles only mask"
        if reason is None:
            need = smem_bytes(shape, config, gemm)
            if need > smem_limit:
                reason = f"shared memory: needs ~{need} bytes, device allows {smem_limit}"
        if reason is None:
            launch = _launch_key(shape, M, config, gemms)
            twin = kept_by_launch.setdefault(launch, config)
            if twin is not config:
                reason = f"duplicate: launches as GROUP_SIZE_M={twin['GROUP_SIZE_M']} ({config_str(twin)})"
        result.append((config, reason))
    return result

