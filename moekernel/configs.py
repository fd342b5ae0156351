"""Tuned-config files, in the engines' format and in moekernel's own, and the runtime lookup that picks a config
for a batch size.

Engine file: ``E={E},N={N},device_name={name}[,dtype={dtype}][,block_shape=[bn,bk]].json``; content
``{"triton_version": "...", "1": {six parameters}, "2": {...}}``. Split tuning writes the up-GEMM configs to
that name and the down-GEMM configs to its ``_down.json`` twin; the lookup pairs them up again.

moekernel's own file, for configs with parameters beyond the engines' six (moekernel.heuristics.EXTENDED_PARAMS):
the engine file's name with ``.moekernel.json`` for ``.json`` (no engine opens it), content
``{"format": "moekernel-configs", "version": 1, "triton_version": "...", "configs": {"1": {"up": {...},
"down": {...}}, ...}}`` with every parameter (moekernel.heuristics.ALL_PARAMS) in both halves. The lookup reads it
before the engine file of the same folder.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .dtypes import info as dtype_info
from .heuristics import default_config, up_down
from .launch_params import ALL_PARAMS, EXTENDED_PARAMS, PARAMS

SHIPPED_FOLDER = Path(__file__).parent / "configs_shipped"
ENV_FOLDER = "MOEKERNEL_CONFIG_FOLDER"
CPU_DEVICE = "cpu-interpreter"
#: Without a GPU (the interpreter), a device name to use instead of CPU_DEVICE: lets tests stand in for GPU models.
#: Never consulted when a GPU is visible.
ENV_INTERPRETER_DEVICE = "MOEKERNEL_INTERPRETER_DEVICE"

#: The batch sizes engine config files cover (those the engines' tuning scripts sweep).
STANDARD_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)

DOWN_SUFFIX = "_down.json"  # split tuning's down-GEMM twin of an engine file
EXTENDED_SUFFIX = ".moekernel.json"  # moekernel's own file beside an engine file
EXTENDED_FORMAT, EXTENDED_VERSION = "moekernel-configs", 1


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
    return interpreter_device_name()


def interpreter_device_name() -> str:
    """The device name of timings made in the Triton interpreter: ``cpu-interpreter``, or
    $MOEKERNEL_INTERPRETER_DEVICE."""
    return os.environ.get(ENV_INTERPRETER_DEVICE) or CPU_DEVICE


_current_device_name = device_name  # the parameters below shadow the name


def config_file_name(E: int, N: int, dtype: str | None = None, block_shape=None, device_name: str | None = None,
                     gemm: str | None = None) -> str:
    if device_name is None:
        device_name = _current_device_name()
    name = f"E={E},N={N},device_name={device_name}"
    if dtype == "auto" or (dtype is not None and not dtype_info(dtype).quantized):
        dtype = None  # the engines name unquantized files without a dtype
    if dtype:
        name += f",dtype={dtype}"
    if block_shape is not None and all(block_shape):
        name += f",block_shape=[{int(block_shape[0])},{int(block_shape[1])}]"
    if gemm not in (None, "both", "up", "down"):
        raise ValueError(f"gemm must be None, 'both', 'up' or 'down', got {gemm!r}")
    return name + (DOWN_SUFFIX if gemm == "down" else ".json")


def extended_config_file_name(E: int, N: int, dtype: str | None = None, block_shape=None,
                              device_name: str | None = None) -> str:
    """moekernel's own file beside the engine file of the same shape and device (see the module docstring)."""
    return config_file_name(E, N, dtype, block_shape, device_name).removesuffix(".json") + EXTENDED_SUFFIX


def is_engine_file_name(name: str) -> bool:
    """Whether a file name (a ``config_file_name``) is an engine file: not a ``_down.json`` twin, not ours."""
    return name.endswith(".json") and not name.endswith((DOWN_SUFFIX, EXTENDED_SUFFIX))


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


def _read_extended(path: Path) -> dict[int, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != EXTENDED_FORMAT:
        raise ValueError(f"{path}: not a moekernel config file (needs \"format\": \"{EXTENDED_FORMAT}\")")
    if data.get("version") != EXTENDED_VERSION:
        raise ValueError(f"{path}: version {data.get('version')!r}; this moekernel reads version {EXTENDED_VERSION}")
    if not isinstance(data.get("configs"), dict):
        raise ValueError(f"{path}: needs \"configs\": {{batch size: {{\"up\": .., \"down\": ..}}}}")
    out = {}
    for key, value in data["configs"].items():
        try:
            m = int(key)
        except ValueError:
            raise ValueError(f"{path}: key {key!r} of configs is not a batch size") from None
        if not isinstance(value, dict) or set(value) != {"up", "down"}:
            raise ValueError(f"{path}: batch size {m} must hold exactly 'up' and 'down'")
        for gemm, cfg in value.items():
            missing = [p for p in PARAMS if p not in cfg]
            if missing:
                raise ValueError(f"{path}: batch size {m} {gemm} lacks {', '.join(missing)}")
        # An extended parameter newer than the file takes its default (the engines' behaviour).
        out[m] = {gemm: {p: value[gemm].get(p, EXTENDED_PARAMS.get(p)) for p in ALL_PARAMS} for gemm in ("up", "down")}
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
                 folders=None, fallback: bool = True, extended: bool = True) -> dict[int, dict] | None:
    """The first matching file in ``folders``, then ``$MOEKERNEL_CONFIG_FOLDER``, then the shipped configs
    (``fallback=False``: ``folders`` only). In each folder moekernel's own file comes first (``extended=False``:
    engine files only), then the engine file.

    Returns {batch size: config}; a config is ``{"up": .., "down": ..}`` where a ``_down.json`` twin exists, and
    always from our own file.
    """
    name = config_file_name(E, N, dtype, block_shape, device_name)
    down_name = config_file_name(E, N, dtype, block_shape, device_name, gemm="down")
    own_name = extended_config_file_name(E, N, dtype, block_shape, device_name)
    for folder in _search_folders(folders, fallback):
        if extended and (folder / own_name).is_file():
            return _read_extended(folder / own_name)
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
    """The tuned config of the batch size nearest to M for this device (:func:`load_configs`: our own file, then
    the engine file), else :func:`default_config` with moekernel's extended parameters."""
    block = tuple(block_shape) if block_shape is not None else None
    configs = _cached_configs(E, N, dtype, block, _current_device_name(), os.environ.get(ENV_FOLDER))
    if configs:
        return configs[nearest_batch_size(configs, M)]
    return default_config(M, E, N, K, topk, dtype, block, extended=True)


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
        beyond = {p: cfg[p] for p in EXTENDED_PARAMS if cfg.get(p, EXTENDED_PARAMS[p]) != EXTENDED_PARAMS[p]}
        if beyond:
            raise ValueError(f"config for batch size {m} sets {beyond}, which an engine file cannot hold: "
                             "write it with write_extended_config_file")
        data[str(int(m))] = {p: int(cfg[p]) for p in PARAMS}
    return json.dumps(data, indent=4) + "\n"


def format_extended_config_file(configs: dict[int, dict], triton_version: str | None = None) -> str:
    """moekernel's own JSON text (see the module docstring) from {batch size: any config fused_experts takes}:
    each config as its up and down halves, every parameter (extended ones at their default where not given) in
    ALL_PARAMS order, batch sizes ascending."""
    if triton_version is None:
        import triton

        triton_version = triton.__version__
    entries = {}
    for m in sorted(configs):
        halves = {}
        for gemm, cfg in zip(("up", "down"), up_down(configs[m])):
            missing = [p for p in PARAMS if p not in cfg]
            if missing:
                raise ValueError(f"config for batch size {m} ({gemm}) lacks {', '.join(missing)}")
            halves[gemm] = {p: int(cfg.get(p, EXTENDED_PARAMS.get(p))) for p in ALL_PARAMS}
        entries[str(int(m))] = halves
    data = {"format": EXTENDED_FORMAT, "version": EXTENDED_VERSION, "triton_version": triton_version,
            "configs": entries}
    return json.dumps(data, indent=4) + "\n"


def _write_atomically(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_config_file(path, configs: dict[int, dict], triton_version: str | None = None) -> Path:
    """Write an engine file atomically; equal input gives byte-identical files."""
    return _write_atomically(path, format_config_file(configs, triton_version))


def write_extended_config_file(path, configs: dict[int, dict], triton_version: str | None = None) -> Path:
    """Write moekernel's own file (name it with :func:`extended_config_file_name`) atomically; byte-identical for
    equal input."""
    return _write_atomically(path, format_extended_config_file(configs, triton_version))
