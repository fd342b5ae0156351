"""Programmatic dependent launch (PDL): each kernel of a fused call is launched while the one before it finishes.

A fused call is a chain of short kernels (alignment, quantization, up GEMM, down GEMM, top-k sum). Between two of
them the GPU normally drains the first grid completely before it starts the next one: a gap that is a large share
of a decode-size call (a few microseconds of a 19 us call for Qwen3-30B-A3B at M = 1). Launched with PDL (Hopper
and later), a kernel's programs can become resident as soon as every program of the kernel ahead of it has
started; each waits (``griddepcontrol.wait``) until that kernel has finished and its writes are visible, before
it touches memory. So every kernel of the op both waits for its predecessor and lets its successor launch early
(the ``PDL`` constexpr of each kernel in ``_kernels``).

The launch attribute and the constexpr go together (``launch_meta``): a kernel launched with PDL that did not wait
could read what the kernel before it has not written yet.

While a GEMM's program waits, it can already fetch its weights into L2 (:func:`prefetch_row_bytes`): the weights are
never written, and which expert a program's rows have follows from the routing, complete before the op began. At a
decode size the weight stream so starts during the alignment (up GEMM) or the up GEMM (down GEMM).

On by default where the GPU has it; the environment variable ``MOEKERNEL_PDL=0`` turns it off (``=1`` keeps the
default), and :func:`forced` sets it, and the prefetching, for a block of code (the probe that measures them).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

ENV_VAR = "MOEKERNEL_PDL"
#: The first compute capability with grid dependency control (and the bulk L2 prefetch).
MIN_ARCH = 90
#: What the programs of one GEMM fetch into L2 ahead of their wait, in all: half of an H100's or H200's 50 MB L2, so
#: that what is fetched is still there when the program reads it.
PREFETCH_L2_BYTES = 24 << 20
#: A row's prefetch shorter than this is not worth its instruction (a few cache lines).
MIN_PREFETCH_ROW_BYTES = 256

_forced: list[tuple[bool, bool]] = []


@contextlib.contextmanager
def forced(enabled: bool, *, prefetch: bool = True) -> Iterator[None]:
    """Launch with PDL on or off inside the block, whatever the environment says (never in the interpreter); with
    ``prefetch=False`` the GEMMs' programs do not fetch weights ahead of their wait."""
    _forced.append((bool(enabled), bool(prefetch)))
    try:
        yield
    finally:
        _forced.pop()


def _setting() -> bool:
    value = os.environ.get(ENV_VAR, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 (launch without programmatic dependent launch) or 1 (the default: "
                         f"with it where the GPU has it); got {value!r}")
    return value == "1"


@functools.lru_cache(maxsize=None)
def _device_has_it(device: int) -> bool:
    from triton.runtime import driver

    target = driver.active.get_current_target()
    return target.backend == "cuda" and isinstance(target.arch, int) and target.arch >= MIN_ARCH


def active() -> bool:
    """Whether the op's kernels launch with PDL now: compiled for CUDA on a GPU that has it, and not turned off."""
    from ..backend import interpreted

    wanted = _forced[-1][0] if _forced else _setting()  # a bad setting is an error on every backend
    if not wanted or interpreted():
        return False
    from triton.runtime import driver

    return _device_has_it(driver.active.get_current_device())


def launch_meta() -> dict:
    """The keyword arguments of a launch of one of the op's kernels: the kernel's PDL constexpr and Triton's launch
    option, always the same (a compile for a warmup must make the binary the launch then uses)."""
    on = active()
    return {"PDL": on, "launch_pdl": on}


def prefetch_row_bytes(weights, *, entries: int, row_blocks: int, rows: int, k_steps: int, block_k: int) -> int:
    """Bytes of each weight row that a GEMM's program fetches into L2 before it waits; 0 for none.

    ``weights`` [E, rows, K] as the GEMM reads them; ``entries`` the op's (token, expert) entries; ``row_blocks``
    the GEMM's row-block programs (row block i fetches for entry i, so every entry needs one); ``rows`` the weight
    rows of one expert that the GEMM reads (gate and up rows for the up GEMM); ``k_steps`` and ``block_k`` one
    program's share of K (a split-K program reads a part). The fetches of all programs stay within
    PREFETCH_L2_BYTES.
    """
    if not active() or (_forced and not _forced[-1][1]) or entries > row_blocks:
        return 0
    elem = weights.element_size()
    # The bulk prefetch takes 16-byte aligned addresses.
    if weights.stride(2) != 1 or (weights.stride(1) * elem) % 16 or (weights.stride(0) * elem) % 16 \
            or weights.data_ptr() % 16:
        return 0
    share = min(k_steps * block_k, weights.shape[2]) * elem
    experts = min(entries, weights.shape[0])
    size = min(share, PREFETCH_L2_BYTES // (experts * rows)) // 16 * 16
    return size if size >= MIN_PREFETCH_ROW_BYTES else 0
