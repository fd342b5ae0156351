"""The launch parameters of a kernel config (the engines' six and moekernel's own), and the values the kernel
accepts for each.

One table serves the kernel's own check of a config (``moekernel.kernel.moe.normalize_config``), the search space
(``moekernel.tuning.space.load_space`` names a value the kernel refuses when the space is read, before any job) and
pruning (a candidate that cannot launch for one GEMM is a recorded row with the reason). No torch or triton:
planning reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: The engines' launch parameters, in the order their files list them.
PARAMS = ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages")
#: moekernel's launch parameters beyond the engines' six, with the default that means "as the engines' kernel":
#: SPLIT_K, programs per down-GEMM output tile, each reducing a contiguous slice of N (a power of two);
#: TMA, how a GEMM loads its tiles: 0 pointer loads (the engines' kernel), 1 the weights through a TMA descriptor,
#: 2 the activations too (from an expert-sorted copy: gathered before the up GEMM; for the down GEMM the up GEMM
#: writes the intermediate in that order);
#: PERSISTENT, how the down GEMM's programs map to tiles: 0 one program per output tile (the engines' kernel), 1 one
#: program per SM walking the tiles of the row blocks in use, the next tile's loads overlapping this one's epilogue;
#: HALF_TAIL, 1: a row block whose second half is padding (the last of an expert's run, when the run ends in its
#: first half) computes BLOCK_SIZE_M // 2 rows, so the MMAs skip that padding (needs BLOCK_SIZE_M >= 32, PERSISTENT 0).
EXTENDED_PARAMS = {"SPLIT_K": 1, "TMA": 0, "PERSISTENT": 0, "HALF_TAIL": 0}
#: The TMA values, by name.
TMA_OFF, TMA_WEIGHTS, TMA_BOTH = 0, 1, 2
#: Extended parameters only the down GEMM takes (the up GEMM's silu(gate)*up epilogue needs its whole reduction):
#: a config for both GEMMs applies them to the down GEMM, and an "up" config must leave them at their default.
DOWN_ONLY_PARAMS = ("SPLIT_K", "PERSISTENT")
#: Every launch parameter, as moekernel's own config files list them.
ALL_PARAMS = PARAMS + tuple(EXTENDED_PARAMS)


@dataclass(frozen=True)
class Rule:
    """What the kernel accepts for one parameter: an integer >= ``minimum``, a power of two if ``power_of_two``,
    one of ``choices`` if given; ``why`` is said with a refusal."""

    minimum: int = 1
    power_of_two: bool = False
    choices: tuple[int, ...] | None = None
    why: str = ""

    def allows(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int) or value < self.minimum:
            return False
        if self.power_of_two and value & (value - 1):
            return False
        return self.choices is None or value in self.choices

    def describe(self) -> str:
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.power_of_two:
            text = f"a power of two >= {self.minimum}"
        else:
            text = f"an integer >= {self.minimum}"
        return f"{text} ({self.why})" if self.why else text


_TILE = Rule(16, power_of_two=True, why="Triton's dot needs every tile side to be a power of two >= 16")

#: The rules for a config that drives the down GEMM only.
RULES: dict[str, Rule] = {
    "BLOCK_SIZE_M": _TILE,
    "BLOCK_SIZE_N": _TILE,
    "BLOCK_SIZE_K": _TILE,
    "GROUP_SIZE_M": Rule(1),
    "num_warps": Rule(choices=(1, 2, 4, 8, 16)),
    "num_stages": Rule(1, why="1: no software pipelining"),
    "SPLIT_K": Rule(1, power_of_two=True, why="1: no split"),
    "TMA": Rule(0, choices=(TMA_OFF, TMA_WEIGHTS, TMA_BOTH),
                why="0: pointer loads, 1: weights by TMA, 2: weights and activations by TMA"),
    "PERSISTENT": Rule(0, choices=(0, 1), why="0: a program per tile, 1: a program per SM over the tiles"),
    "HALF_TAIL": Rule(0, choices=(0, 1), why="0: every block's full rows, 1: half the rows for a block half padding"),
}

#: The up GEMM's tile holds the gate and the up halves of w1, BLOCK_SIZE_N // 2 rows each, each a dot of its own.
UP_RULES: dict[str, Rule] = {
    **RULES,
    "BLOCK_SIZE_N": Rule(32, power_of_two=True, why="for the up GEMM: its tile holds the gate and up halves, "
                                                    "16 rows each at least"),
    "SPLIT_K": Rule(choices=(1,), why="it applies to the down GEMM only: the up GEMM's silu(gate)*up epilogue "
                                      "needs its whole reduction"),
    # The kernel could walk the up GEMM's tiles too, but that was slower at every size probed on the H200 (up to
    # 28%: BENCHMARKS.md, 2026-12-01 fourth session), so configs do not offer it.
    "PERSISTENT": Rule(0, choices=(0,), why="it applies to the down GEMM only: a persistent up GEMM was slower at "
                                         "every size measured"),
}


def rules(gemm: str) -> dict[str, Rule]:
    """The rules for a config driving ``gemm``: ``both`` and ``up`` drive the up GEMM, ``down`` only the down one."""
    if gemm not in ("both", "up", "down"):
        raise ValueError(f"gemm must be 'both', 'up' or 'down', got {gemm!r}")
    return RULES if gemm == "down" else UP_RULES


def problems(config: Mapping[str, int], gemm: str) -> list[str]:
    """One line per parameter of ``config`` the kernel refuses for ``gemm``, e.g. ``num_warps=3: must be one of
    1, 2, 4, 8, 16``; empty if it can launch. A config for ``both`` gives its down-only parameters to the down
    GEMM alone, as the kernel does."""
    if gemm == "both":
        up = {p: v for p, v in config.items() if p not in DOWN_ONLY_PARAMS}
        return list(dict.fromkeys(problems(up, "up") + problems(config, "down")))
    table = rules(gemm)
    out = [f"{p}={config[p]!r}: must be {table[p].describe()}" for p in ALL_PARAMS
           if p in config and not table[p].allows(config[p])]
    if not out and config.get("HALF_TAIL"):
        # Its half tile must still be a dot's (16 rows at least), and a persistent program has no tile of its own.
        if config.get("BLOCK_SIZE_M", 32) < 32:
            out.append(f"HALF_TAIL=1 with BLOCK_SIZE_M={config['BLOCK_SIZE_M']}: needs BLOCK_SIZE_M >= 32 (its "
                       "half tile is a dot of 16 rows at least)")
        if config.get("PERSISTENT"):
            out.append("HALF_TAIL=1 with PERSISTENT=1: half tiles are for one program per tile; set one of them to 0")
    return out


def tma_problem(tma: int, gemm: str, N: int, K: int, act_bytes: int, weight_bytes: int) -> str | None:
    """Why the GEMM(s) ``gemm`` drives cannot load by TMA at ``tma`` on this shape, or None: a descriptor's rows
    must be 16-byte multiples. The up GEMM's rows (x and w1) are K long, the down GEMM's (the intermediate and
    w2) N long; TMA_WEIGHTS needs only the weights' rows to fit."""
    if tma == TMA_OFF:
        return None
    lengths = {"up": K, "down": N}
    for side in (("up", "down") if gemm == "both" else (gemm,)):
        tensors = [("weight", weight_bytes)] + ([("activation", act_bytes)] if tma == TMA_BOTH else [])
        for what, size in tensors:
            if lengths[side] * size % 16:
                return (f"TMA={tma}: the {side} GEMM's {what} rows are {lengths[side]} x {size} bytes, not a "
                        "multiple of 16 (a TMA descriptor needs that)")
    return None


def block_k_problem(block_size_k: int, block_k: int) -> str | None:
    """Block-quantized weights carry one scale per block_k of the reduction, and the kernel scales each K step's
    partial dot by one scale: a K step must stay inside one block (BLOCK_SIZE_K divides block_k)."""
    if block_k % block_size_k:
        return f"BLOCK_SIZE_K={block_size_k} does not divide the quantization block's k={block_k}"
    return None


def block_k_choices(block_k: int) -> list[int]:
    """Every BLOCK_SIZE_K the kernel accepts that divides ``block_k`` (what to offer when a space has none)."""
    tile, choices = RULES["BLOCK_SIZE_K"].minimum, []
    while tile <= block_k:
        if block_k_problem(tile, block_k) is None:
            choices.append(tile)
        tile *= 2
    return choices
