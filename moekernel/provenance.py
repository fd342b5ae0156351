"""What a timing depends on besides its inputs: the kernel's source, and the software that compiled and ran it.

Every shard row carries these (``kernel_hash``, ``triton_version``, ``torch_version``, ``moekernel_version``), and the
pipeline plans with them, so timings of different kernel code or software are never mixed up: a new Triton or torch
re-tunes, and the old timings stay, marked by their versions. Nothing here imports torch or triton at import time:
a planning host needs neither.

``MOEKERNEL_TRITON_VERSION`` (and ``MOEKERNEL_TORCH_VERSION``) stand in for the installed version everywhere it is
planned with or recorded: a way to try the re-tune path without installing another Triton, or to keep timings of a
locally patched build apart (e.g. ``MOEKERNEL_TRITON_VERSION=3.6.0+mypatch``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from pathlib import Path

#: The sources a timing depends on: the kernel package's op, Triton code, alignment and quantization.
KERNEL_SOURCES = ("_kernels.py", "moe.py", "routing.py", "quant.py", "pdl.py")
KERNEL_DIR = Path(__file__).resolve().parent / "kernel"


@functools.lru_cache(maxsize=1)
def kernel_hash() -> str:
    """Hash of the kernel sources, so timings of different kernel code are never mixed up."""
    digest = hashlib.sha256()
    for name in KERNEL_SOURCES:
        path = KERNEL_DIR / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def package_version(name: str) -> str | None:
    """An installed distribution's version, without importing it (None if it is not installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


#: The software a timing depends on, and the variable that stands in for each installed version.
OVERRIDES = {"triton": "MOEKERNEL_TRITON_VERSION", "torch": "MOEKERNEL_TORCH_VERSION"}


def software() -> dict[str, str | None]:
    """{"triton": version, "torch": version} as installed here (or overridden), without importing either: what the
    pipeline plans with, and what a job checks it runs with."""
    return {name: os.environ.get(var) or package_version(name) for name, var in OVERRIDES.items()}


def versions() -> dict[str, str]:
    """The shard's version columns, from the imported modules (what really runs), overrides applied."""
    import torch
    import triton

    from . import __version__

    return {"triton_version": os.environ.get(OVERRIDES["triton"]) or triton.__version__,
            "torch_version": os.environ.get(OVERRIDES["torch"]) or torch.__version__,
            "moekernel_version": package_version("moekernel") or __version__}
