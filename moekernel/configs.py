"""Tuned-config files in the engines' format, and the runtime lookup that picks a config for a batch size.

File name: ``E={E},N={N},device_name={name}[,dtype={dtype}][,block_shape=[bn,bk]].json``; content
``{"triton_version": "...", "1": {six parameters}, "2": {...}}``. Split tuning writes the up-GEMM configs to
that name and the down-GEMM configs to its ``_down.json`` twin; the lookup pairs them up again.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .heuristics import default_config
from .launch_params import PARAMS

SHIPPED_FOLDER = Path(__file__).parent / "configs_shipped"
ENV_FOLDER = "MOEKERNEL_CONFIG_FOLDER"
CPU_DEVICE = "cpu-interpreter"

#: The batch sizes engine config files cover (those the engines' tuning scripts sweep).
STANDARD_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)


def engine_device_name(raw: str) -> str:
    """A device as engines spell it in file names: spaces to '_', every H200 variant as NVIDIA_H200."""
    name = raw.replace(" ", "_")
    return "NVIDIA_H200" if "H200" in name.split("_") else name  # a GH200 is not an H200


def device_name() -> str:
    """The current GPU as engines spell it in file names; ``cpu-interpreter`` when there is no GPU, so configs
    measured in the Triton interpreter can never pass for a GPU's."""
    import torch

    if torch.cuda.is_available():
        return engine_device_name(torch.cuda.get_device_name())
    return CPU_DEVICE


_current_device_name = device_name  # the parameters below shadow the name


def config_file_name(E: int, N: int, dtype: str | None = None, block_shape=None, device_name: str | None = None,
                     gemm: str | None = None) -> str:
    if device_name is None:
        device_name = _current_device_name()
    name = f"E={E},N={N},device_name={device_name}"
    if dtype in ("bf16", "fp16", "auto"):
        dtype = None
    if dtype:
        name += f",dtype={dtype}"
    if block_shape is not None and all(block_shape):
        name += f",block_shape=[{int(block_shape[0])},{int(block_shape[1])}]"
    if gemm not in (None, "both", "up", "down"):
        raise ValueError(f"gemm must be None, 'both', 'up' or 'down', got {gemm!r}")
    return name + ("_down.json" if gemm == "down" else ".json")


def _read(path: Path) -> dict[int, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    out = {}
    for key, value in data.items():
        if key == "triton_version":
            continue
        try:
            m = int(key)
        except ValueError:
            raise ValueError(f"{path}: key {key!r} is not a batch size") from None
        missing = [p for p in PARAMS[:4] if p not in value]
        if missing:
            raise ValueError(f"{path}: batch size {m} lacks {', '.join(missing)}")
        out[m] = {k: value[k] for k in PARAMS if k in value}
    return out


def _search_folders(folders, fallback: bool = True) -> list[Path]:
    found = [Path(f) for f in (folders or [])]
    if not fallback:
        return found
    env = os.environ.get(ENV_FOLDER)
    if env:
        found += [Path(f) for f in env.split(os.pathsep) if f]
    found.append(SHIPPED_FOLDER)
    return found


def load_configs(E: int, N: int, dtype: str | None = None, block_shape=None, device_name: str | None = None,
                 folders=None, fallback: bool = True) -> dict[int, dict] | None:
    """The first matching file in ``folders``, then ``$MOEKERNEL_CONFIG_FOLDER``, then the shipped configs
    (``fallback=False``: ``folders`` only).

    Returns {batch size: config}; a config is ``{"up": .., "down": ..}`` where a ``_down.json`` twin exists.
    """
    name = config_file_name(E, N, dtype, block_shape, device_name)
    down_name = config_file_name(E, N, dtype, block_shape, device_name, gemm="down")
    for folder in _search_folders(folders, fallback):
        path = folder / name
        if path.is_file():
            configs = _read(path)
            down = folder / down_name
            if down.is_file():
                down_configs = _read(down)
                return {m: {"up": c, "down": down_configs[nearest_batch_size(down_configs, m)]} for m, c in configs.items()}
            return configs
    return None


@functools.lru_cache(maxsize=256)
def _cached_configs(E, N, dtype, block_shape, device, env):
    return load_configs(E, N, dtype, block_shape, device)


def nearest_batch_size(configs: dict[int, dict], M: int) -> int:
    """The entry an engine uses for M: the nearest batch size, the smaller one on a tie."""
    return min(configs, key=lambda m: (abs(m - M), m))


def get_config(M: int, E: int, N: int, K: int, topk: int, dtype: str | None = None, block_shape=None) -> dict:
    """The tuned config of the batch size nearest to M for this device, else :func:`default_config`."""
    block = tuple(block_shape) if block_shape is not None else None
    configs = _cached_configs(E, N, dtype, block, _current_device_name(), os.environ.get(ENV_FOLDER))
    if configs:
        return configs[nearest_batch_size(configs, M)]
    return default_config(M, E, N, K, topk, dtype, block)


def format_config_file(configs: dict[int, dict], triton_version: str | None = None) -> str:
    """The engines' JSON text: triton_version first, batch sizes ascending, parameters in a fixed order."""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    data = {"triton_version": triton_version}
    for m in sorted(configs):
        cfg = configs[m]
        missing = [p for p in PARAMS if p not in cfg]
        if missing:
            raise ValueError(f"config for batch size {m} lacks {', '.join(missing)}")
        data[str(int(m))] = {p: int(cfg[p]) for p in PARAMS}
    return json.dumps(data, indent=4) + "\n"


def write_config_file(path, configs: dict[int, dict], triton_version: str | None = None) -> Path:
    """Write atomically; equal input gives byte-identical files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_config_file(configs, triton_version))
    os.replace(tmp, path)
    return path
