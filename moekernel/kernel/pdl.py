"""Programmatic dependent launch (PDL): each kernel of a fused call is launched while the one before it finishes.

A fused call is a chain of short kernels (alignment, quantization, up GEMM, down GEMM, top-k sum). Between two of
them the GPU normally drains the first grid completely before it starts the next one: a gap that is a large share
of a decode-size call (a few microseconds of a 19 us call for Qwen3-30B-A3B at M = 1). Launched with PDL (Hopper
and later), a kernel's programs can become resident as soon as every program of the kernel ahead of it has
started; each waits (``griddepcontrol.wait``) until that kernel has finished and its writes are visible, before
it touches memory. So every kernel of the op both waits for its predecessor and lets its successor launch early
(the ``PDL`` constexpr of each kernel in ``_kernels``).

The launch attribute and the constexpr go together (``launch_meta``): a kernel launched with PDL that did not wait
could read what the kernel before it has not written yet. On by default where the GPU has it; the environment
variable ``MOEKERNEL_PDL=0`` turns it off (``=1`` keeps the default), and :func:`forced` does so for a block of code
(the probe that measures what PDL gains).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from triton.runtime import driver

from ..backend import interpreted

ENV_VAR = "MOEKERNEL_PDL"
#: The first compute capability with grid dependency control.
MIN_ARCH = 90

_forced: list[bool] = []


@contextlib.contextmanager
def forced(enabled: bool) -> Iterator[None]:
    """Launch with PDL on or off inside the block, whatever the environment says (never in the interpreter)."""
    _forced.append(bool(enabled))
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
    target = driver.active.get_current_target()
    return target.backend == "cuda" and isinstance(target.arch, int) and target.arch >= MIN_ARCH


def active() -> bool:
    """Whether the op's kernels launch with PDL now: compiled for CUDA on a GPU that has it, and not turned off."""
    wanted = _forced[-1] if _forced else _setting()  # a bad setting is an error on every backend
    if not wanted or interpreted():
        return False
    return _device_has_it(driver.active.get_current_device())


def launch_meta() -> dict:
    """The keyword arguments of a launch of one of the op's kernels: the kernel's PDL constexpr and Triton's launch
    option, always the same (a compile for a warmup must make the binary the launch then uses)."""
    on = active()
    return {"PDL": on, "launch_pdl": on}
