"""Where the kernels run: ``cuda`` (compiled for the GPU) or ``interpret`` (Triton's CPU interpreter).

Triton fixes the choice when a kernel is defined: ``TRITON_INTERPRET=1`` at the import of
``moekernel.kernel._kernels`` gives interpreted kernels for the life of the process, and the variable's value later
says nothing about them. So the kernels' own type is the truth (:func:`kernels_mode`), and a command picks its
backend (:func:`resolve_backend`) before anything imports them. ``import moekernel`` does not.
"""

from __future__ import annotations

import os
import sys

BACKENDS = ("auto", "cuda", "interpret")
KERNEL_MODULE = "moekernel.kernel._kernels"
_RESTARTED = "_MOEKERNEL_INTERPRETER_RESTART"

#: The interpreter runs the kernels through NumPy, a call of a real model's shape takes minutes to hours there: the
#: benchmark refuses a shape with more weight elements than this, and so does the tuner unless asked for the
#: interpreter by name (``--backend interpret``).
INTERPRETER_MAX_WEIGHTS = 1 << 22
#: A shape the interpreter runs in seconds, to suggest instead (the pipeline's demo shape).
INTERPRETER_EXAMPLE_KEY = "E4-N64-K64-top2-fp16"


def interpreter_size_problem(shape) -> str | None:
    """Why ``shape`` (a KernelShape) is too large for the interpreter, or None: the one rule bench and tune share."""
    weights = shape.E * 3 * shape.N * shape.K  # w1 [E, 2N, K] and w2 [E, K, N]
    if weights <= INTERPRETER_MAX_WEIGHTS:
        return None
    return (f"{shape.key} has {weights:,} weight elements, far more than Triton's CPU interpreter runs in reasonable "
            f"time (at most {INTERPRETER_MAX_WEIGHTS:,})")


_mode_of: tuple[object, str] | None = None  # (the kernel module, its mode): asked before every launch


def kernels_mode() -> str | None:
    """``interpret`` or ``cuda``: how the imported kernels were defined; None if they are not imported yet."""
    global _mode_of
    module = sys.modules.get(KERNEL_MODULE)
    if module is None:
        return None
    if _mode_of is None or _mode_of[0] is not module:  # a module imported anew is looked at anew
        kinds = {type(v).__name__ for v in vars(module).values()}
        _mode_of = (module, "interpret" if "InterpretedFunction" in kinds else "cuda")
    return _mode_of[1]


def interpreted() -> bool:
    """True when the kernels run in the interpreter (imports them if nothing has)."""
    if kernels_mode() is None:
        __import__(KERNEL_MODULE)
    return kernels_mode() == "interpret"


def wanted_backend(backend: str = "auto") -> str:
    """``cuda`` or ``interpret``, before any check against the imported kernels. ``auto``: interpret if
    TRITON_INTERPRET=1, the kernels were defined for the interpreter, or there is no GPU; else cuda."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be {', '.join(BACKENDS)}; got {backend!r}")
    if backend != "auto":
        return backend
    if os.environ.get("TRITON_INTERPRET") == "1" or kernels_mode() == "interpret":
        return "interpret"
    import torch

    return "cuda" if torch.cuda.is_available() else "interpret"


def resolve_backend(backend: str = "auto") -> str:
    """:func:`wanted_backend`, made so: for ``interpret`` TRITON_INTERPRET is set before the kernels are defined.

    Raises ValueError for ``cuda`` without a visible CUDA device, and RuntimeError if the kernels were already
    imported for the other backend (call this before importing ``moekernel.kernel``, or use
    :func:`restart_in_interpreter` from a command line).
    """
    backend = wanted_backend(backend)
    if backend == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"backend 'cuda', but torch {torch.__version__} sees no CUDA device "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run on a "
                             "GPU machine, or use backend auto or interpret for Triton's CPU interpreter")
    mode = kernels_mode()
    if mode is not None and mode != backend:
        raise RuntimeError(
            f"backend {backend!r} but the kernels were imported for {mode!r}: set TRITON_INTERPRET="
            f"{'1' if backend == 'interpret' else '0'} before importing moekernel.kernel"
        )
    if backend == "interpret":
        os.environ["TRITON_INTERPRET"] = "1"
    return backend


def command_backend(backend: str, module: str, *, restart: bool) -> str:
    """The backend of a ``python -m module`` command. If its kernels were already defined for CUDA but it must run
    interpreted, run the command again under TRITON_INTERPRET=1 (``restart``) or raise."""
    if wanted_backend(backend) == "interpret" and kernels_mode() == "cuda":
        if not restart:  # called as a function: never replace the caller's process
            raise RuntimeError("set TRITON_INTERPRET=1 before importing moekernel.kernel to use the interpreter")
        restart_in_interpreter(module)
    return resolve_backend(backend)


def restart_in_interpreter(module: str) -> None:
    """Run ``python -m module`` again, with the same arguments, under TRITON_INTERPRET=1."""
    if os.environ.get(_RESTARTED):
        raise RuntimeError("kernels still not in interpreter mode after setting TRITON_INTERPRET=1")
    env = dict(os.environ, TRITON_INTERPRET="1", **{_RESTARTED: "1"})
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def torch_device(backend: str) -> str:
    """The torch device a backend's tensors live on."""
    return "cuda" if backend == "cuda" else "cpu"
