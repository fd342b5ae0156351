"""Compile moekernel's GEMM kernel for an H100/H200 (sm_90) on a machine without a GPU, and say what came out.

Run by test_hopper_compile.py in a process of its own: the interpreter (TRITON_INTERPRET) must be off, and a
stand-in driver answers the questions Triton's compile asks of a GPU (its target). Compiling catches what the
interpreter lets pass (it runs the kernel's Python as Python) and shows what Triton made of a config: which MMA
and how much shared memory.

    python tests/hopper_compile.py '[["E8-N7168-K4096-top2-bf16", {config}], ["...", {config}, false], ...]'

(a third element turns programmatic dependent launch on or off for that case; else moekernel's default) prints a
JSON list, one object per case: {"ok": bool, "error": str, "binaries": [{"mma": 2 or 3, "shared": bytes, "pdl":
whether the PTX waits for the kernel before and lets the next one launch}]}.
"""

import contextlib
import json
import os
import re
import sys


class _Sm90Driver:
    """What Triton's JIT asks of the driver when it only compiles (warmup): the target, a device and a stream."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


def main(cases) -> list[dict]:
    os.environ.pop("TRITON_INTERPRET", None)
    from triton.runtime import driver

    driver.set_active(_Sm90Driver())
    from moekernel.kernel import _kernels, pdl
    from moekernel.kernel.moe import compile_config
    from moekernel.shapes import KernelShape

    def binaries():
        return {id(k): k for cache in _kernels._fused_moe_gemm.device_caches.values() for k in cache[0].values()}

    out = []
    for key, config, *launch in cases:
        before = binaries()
        try:
            with pdl.forced(launch[0]) if launch else contextlib.nullcontext():
                compile_config(KernelShape.from_key(key), 64, config)  # every launch of the op, as the tuner does
        except Exception as exc:  # noqa: BLE001 - each case reports its own failure
            out.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[-2000:], "binaries": []})
            continue
        found = []
        for k in (k for i, k in binaries().items() if i not in before):
            versions = {int(v) for v in re.findall(r"versionMajor = (\d+)", k.asm["ttgir"])}
            ptx = k.asm["ptx"]
            found.append({"mma": max(versions) if versions else None, "shared": k.metadata.shared,
                          "pdl": "griddepcontrol.wait" in ptx and "griddepcontrol.launch_dependents" in ptx})
        out.append({"ok": True, "error": "", "binaries": found})
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
