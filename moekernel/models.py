"""Models → kernel shapes.

:func:`kernel_shape` turns a model name plus a parallel layout into the shape one GPU's fused-MoE
call sees (:class:`moekernel.shapes.KernelShape`), the way the serving engines shard it:

* tensor parallel (default): every rank holds all E experts, each cut along the intermediate
  dimension, so ``N = I / tp``;
* expert parallel (``expert_parallel=True``, ep = tp_size): every rank holds ``E / ep`` whole
  experts, so ``N = I``.

A model is a catalog name (``list_models()``, one JSON per model under ``moekernel/catalog/``,
copied from the model's own config.json), a Hugging Face id (the catalog's ``_source``/``_aliases``
first, then the local HF cache; never the network), or a folder holding a config.json.

The shape is read from the values the config.json itself holds, never from a config class: a class
fills a missing field with its own default (a Mixtral config without ``num_local_experts`` answers
8, Mixtral-8x7B's count), which would tune a silently wrong shape, and classes rename and validate
fields between transformers releases. A field the shape needs and the file lacks is an error that
names it. :func:`load_model_config` still gives the transformers config object, for callers that
want one; a config that transformers cannot build falls back to a plain ``PretrainedConfig``.
"""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moekernel.shapes import DTYPES, KernelShape

log = logging.getLogger(__name__)

try:  # transformers 5 validates config fields through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassError as _StrictError
except ImportError:  # older huggingface_hub: no such validation, nothing extra to catch
    _StrictError = ValueError

#: What building a config may raise when the installed transformers disagrees with a config.json.
_CONFIG_ERRORS = (TypeError, ValueError, KeyError, _StrictError)

CATALOG_DIR = Path(__file__).with_name("catalog")

#: What ``dtype=`` accepts: "auto" (the model's own) or one of the kernel's dtypes.
ALLOWED_DTYPES = ("auto",) + DTYPES

# Where multimodal / omni configs keep their language model, tried in this order when the
# top-level config has no MoE fields of its own.
_NESTED_CONFIGS = ("text_config", "thinker_config.text_config", "thinker_config", "language_config", "llm_config")


# --------------------------------------------------------------------------------------------
# Architecture families: which config fields hold E, topk, I and K.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    """One spelling of the MoE fields. Each field is a tuple of candidate names, first present wins."""

    name: str
    model_types: tuple[str, ...]
    experts: tuple[str, ...]
    topk: tuple[str, ...]
    intermediate: tuple[str, ...]
    hidden: tuple[str, ...] = ("hidden_size",)

    def fields(self) -> dict[str, tuple[str, ...]]:
        """What each of the shape's fields means (for messages) -> the names it may have in config.json."""
        return {"the number of experts": self.experts, "experts per token": self.topk,
                "the expert intermediate size": self.intermediate, "the hidden size": self.hidden}


# Order matters for configs whose model_type is unknown (remote code, newer models): the more
# specific spellings come first, because transformers' attribute maps make e.g. a Qwen3-MoE config
# answer to ``num_local_experts`` too, while its expert width is ``moe_intermediate_size``.
_FAMILIES = (
    _Family(
        "DBRX",
        ("dbrx",),
        experts=("ffn_config.moe_num_experts",),
        topk=("ffn_config.moe_top_k",),
        intermediate=("ffn_config.ffn_hidden_size",),
        hidden=("d_model", "hidden_size"),
    ),
    _Family(
        "DeepSeek-V2/V3 style (n_routed_experts, moe_intermediate_size)",
        ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2", "glm4_moe", "glm4_moe_lite", "glm4v_moe_text"),
        experts=("n_routed_experts",),
        topk=("num_experts_per_tok",),
        intermediate=("moe_intermediate_size",),
    ),
    _Family(
        "Qwen2/Qwen3 MoE, Qwen3-Next (num_experts, moe_intermediate_size)",
        ("qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_vl_moe_text", "qwen3_omni_moe_text", "qwen3_5_moe_text"),
        experts=("num_experts",),
        topk=("num_experts_per_tok",),
        intermediate=("moe_intermediate_size",),
    ),
    _Family(
        "HunYuan MoE (list-valued moe_topk, moe_intermediate_size)",
        ("hunyuan_v1_moe",),
        experts=("num_experts",),
        topk=("moe_topk", "num_experts_per_tok"),
        intermediate=("moe_intermediate_size",),
    ),
    _Family(
        "Jamba, OLMoE (num_experts, intermediate_size)",
        ("jamba", "olmoe"),
        experts=("num_experts",),
        topk=("num_experts_per_tok",),
        intermediate=("intermediate_size",),
    ),
    _Family(
        "Mixtral style: Mixtral, Llama-4, gpt-oss, PhiMoE (num_local_experts, intermediate_size)",
        ("mixtral", "llama4_text", "gpt_oss", "phimoe"),
        experts=("num_local_experts",),
        topk=("num_experts_per_tok", "experts_per_token"),
        intermediate=("intermediate_size",),
    ),
)


def supported_architectures() -> list[str]:
    """One line per architecture family: its name and the model_types known to use it."""
    return [f"{f.name}: {', '.join(f.model_types)}" for f in _FAMILIES]


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """A model's fused-MoE shape on one GPU of a parallel layout.

    ``E`` is the experts one GPU holds (all of them under tensor parallelism), ``N`` the per-GPU
    intermediate size, ``K`` the hidden size; ``num_experts`` and ``intermediate_size`` are the
    unsharded model values. ``note`` says when ``dtype="auto"`` could not follow the model's own
    weights (e.g. gpt-oss' mxfp4) or a list-valued field was ambiguous.
    """

    model: str
    tp_size: int
    expert_parallel: bool
    E: int
    N: int
    K: int
    topk: int
    dtype: str
    block_shape: tuple[int, int] | None
    num_experts: int
    intermediate_size: int
    model_type: str | None = None
    note: str | None = None

    @property
    def ep_size(self) -> int:
        return self.tp_size if self.expert_parallel else 1

    @property
    def kernel(self) -> KernelShape:
        return KernelShape(self.E, self.N, self.K, self.topk, self.dtype, self.block_shape)

    @property
    def key(self) -> str:
        return self.kernel.key

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (block_shape as a list), plus the kernel key."""
        out = asdict(self)
        out["block_shape"] = list(self.block_shape) if self.block_shape else None
        out["key"] = self.key
        return out


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _catalog() -> dict[str, dict[str, Any]]:
    entries = {}
    for path in sorted(CATALOG_DIR.glob("*.json")):
        with open(path, encoding="utf-8") as f:
            entries[path.stem] = json.load(f)
    return entries


def list_models() -> list[str]:
    """Catalog names, sorted (``mixtral-8x7b``, ``deepseek-v3``, ...)."""
    return sorted(_catalog())


def _catalog_lookup(model: str) -> tuple[str, dict[str, Any]] | None:
    """(name, values) of a catalog entry by name or by the HF id it was copied from (case-insensitive)."""
    wanted = model.strip().lower()
    for name, values in _catalog().items():
        ids = [name, values.get("_source", ""), *values.get("_aliases", [])]
        if wanted in (i.lower() for i in ids):
            return name, json.loads(json.dumps(values))  # a private copy: callers must not edit the cache
    return None


# --------------------------------------------------------------------------------------------
# Loading configs
# --------------------------------------------------------------------------------------------


def _build_config(values: Mapping[str, Any]):
    """A config object from config.json values: the transformers class if it can build one, else plain."""
    from transformers import CONFIG_MAPPING, PretrainedConfig

    values = {k: v for k, v in values.items() if not k.startswith("_")}  # _source, _name_or_path, ...
    model_type = values.get("model_type")
    if model_type in CONFIG_MAPPING:
        kwargs = {k: v for k, v in values.items() if k != "model_type"}
        try:
            return CONFIG_MAPPING[model_type](**kwargs)
        except _CONFIG_ERRORS as exc:
            # Field validation differs between transformers releases; the raw fields still hold.
            log.debug("transformers cannot build a %s config (%s); using a plain config", model_type, exc)
    config = PretrainedConfig(**values)
    if model_type:
        config.model_type = model_type  # an instance attribute; the base class has model_type = ""
    return config


def _from_pretrained(source: str, config_json: Path, trust_remote_code: bool):
    """AutoConfig from a folder or cached HF id, offline; the raw config.json if transformers refuses."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except (*_CONFIG_ERRORS, OSError) as exc:
        # Unknown model_type, remote code not trusted, stricter validation than the file meets, or
        # a cache layout transformers does not read the way huggingface_hub found it.
        log.debug("AutoConfig could not load %s (%s); reading %s directly", source, exc, config_json)
        return _build_config(_read_json(config_json))


def _cached_config_json(repo_id: str) -> Path | None:
    """The config.json of a HF id in the local cache, or None; never goes to the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id (HFValidationError)
        return None
    return Path(found) if isinstance(found, str) else None


def _unknown_model(model: str) -> ValueError:
    return ValueError(
        f"unknown model {model!r}. Use a catalog name ({', '.join(list_models())}), "
        "a Hugging Face id (resolved offline: it must be in the catalog or already in the local "
        "Hugging Face cache), or a folder containing config.json."
    )


@dataclass(frozen=True)
class _Source:
    """Where a model's config comes from: its config.json values as written, and the file holding them."""

    values: dict[str, Any]
    path: Path
    pretrained: str | None = None  # what AutoConfig.from_pretrained takes (a folder or a cached HF id)


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _locate(model: str) -> _Source:
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return _Source(_read_json(path / "config.json"), path / "config.json", pretrained=str(path))
    if path.is_file() and path.suffix == ".json":
        return _Source(_read_json(path), path)
    entry = _catalog_lookup(model)
    if entry is not None:
        name, values = entry
        return _Source(values, CATALOG_DIR / f"{name}.json")
    cached = _cached_config_json(model)
    if cached is not None:
        return _Source(_read_json(cached), cached, pretrained=model)
    if path.is_dir():  # checked last: a stray folder named like a catalog model must not shadow it
        raise ValueError(f"model folder {str(path)!r} has no config.json")
    raise _unknown_model(model)


def _load_root_config(model: str, trust_remote_code: bool):
    source = _locate(model)
    if source.pretrained is not None:
        return _from_pretrained(source.pretrained, source.path, trust_remote_code)
    return _build_config(source.values)


def _get(obj: Any, dotted: str) -> Any:
    """``obj.a.b`` for configs and dicts alike (nested configs stay dicts in plain configs); None if absent."""
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


def _is_config(value: Any) -> bool:
    return isinstance(value, Mapping) or hasattr(value, "to_dict")


def _sub_config_names(config: Any) -> list[str]:
    """Attributes that look like sub-configs, for error messages (dict-valued settings left out)."""
    items = config.items() if isinstance(config, Mapping) else vars(config).items()
    skip = {"id2label", "label2id", "quantization_config", "rope_scaling", "rope_parameters"}
    return sorted(k for k, v in items if k not in skip and not k.startswith("_") and _is_config(v))


def _descend(config: Any, prefix: str, model: str) -> Any:
    sub = _get(config, prefix)
    if not _is_config(sub):
        names = ", ".join(_sub_config_names(config)) or "none"
        raise ValueError(f"{model}: prefix {prefix!r} is not a sub-config of its config (sub-configs: {names})")
    return sub


def load_model_config(model: str | Path, prefix: str | None = None, trust_remote_code: bool = False):
    """The model's config object (a transformers config, or a plain ``PretrainedConfig`` when the
    installed transformers cannot build it). ``prefix`` descends into a sub-config first, like the
    engines' ``--model-prefix``; dotted paths (``thinker_config.text_config``) work too."""
    model = str(model)
    config = _load_root_config(model, trust_remote_code)
    if prefix:
        config = _descend(config, prefix, model)
        if isinstance(config, Mapping):
            config = _build_config(config)
    return config


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def _first(config: Any, names: tuple[str, ...]) -> tuple[str, Any] | None:
    for name in names:
        value = _get(config, name)
        if value is not None:
            return name, value
    return None


def _missing_fields(config: Any, family: _Family) -> dict[str, tuple[str, ...]]:
    """The shape's fields ``config`` does not hold in ``family``'s spelling: meaning -> names looked for."""
    return {what: names for what, names in family.fields().items() if _first(config, names) is None}


def _missing_fields_error(model: str, source: _Source, where: str, config: Any, family: _Family) -> ValueError:
    missing = "; ".join(f"{what} ({' or '.join(names)})" for what, names in _missing_fields(config, family).items())
    return ValueError(
        f"{model}: {where}{source.path} (model_type {_get(config, 'model_type')!r}) lacks {missing}. "
        "The shape is read only from the values the file holds, never from a library's default (which may be "
        "another model's value); add the field(s) to that file with this model's own value(s), as in the "
        "config.json the model was published with."
    )


def _find_moe_config(config: Any, model: str, source: _Source, prefix: str | None) -> tuple[Any, _Family]:
    """The (sub-)config holding the MoE fields, and their family.

    A known model_type decides the family; otherwise the first family whose fields are all present.
    Nested language-model configs are searched because multimodal models keep the experts there.
    """
    def where(sub: str | None) -> str:  # for messages: which part of the file
        return f"sub-config {sub!r} of " if sub else ""

    candidates = [(where(prefix), config)]
    for name in _NESTED_CONFIGS:
        nested = _get(config, name)
        if _is_config(nested):
            candidates.append((where(f"{prefix}.{name}" if prefix else name), nested))
    unknown_types, incomplete = [], None
    for place, cand in candidates:
        model_type = _get(cand, "model_type")
        family = next((f for f in _FAMILIES if model_type in f.model_types), None)
        if family is None:
            unknown_types.append(cand)
        elif not _missing_fields(cand, family):
            return cand, family
        elif incomplete is None:
            incomplete = (place, cand, family)
    # A known model_type without its fields is not guessed at; unknown ones are matched by fields.
    for cand in unknown_types:
        for family in _FAMILIES:
            if not _missing_fields(cand, family):
                return cand, family
    if incomplete is not None:
        raise _missing_fields_error(model, source, *incomplete)
    model_type = _get(config, "model_type") or "unknown"
    raise ValueError(
        f"{model}: model_type {model_type!r} has no Mixture-of-Experts fields this tool knows "
        "(number of experts, experts per token, expert intermediate size, hidden size). Supported architectures:\n  "
        + "\n  ".join(supported_architectures())
        + "\nIf the experts live in a sub-config, pass prefix=<its attribute name>."
    )


def _scalar(value: Any, field: str, model: str, notes: list[str]) -> int:
    """An int from a config value. Lists hold one value per layer; 0/None mark layers without experts."""
    if isinstance(value, (list, tuple)):
        per_layer = [v for v in value if v]
        if not per_layer:
            raise ValueError(f"{model}: {field} is {value!r}: no layer has experts")
        distinct = sorted(set(per_layer))
        if len(distinct) > 1:
            msg = (
                f"{field} differs between layers ({distinct}); using the first MoE layer's value "
                f"{per_layer[0]} — tune the other values with an explicit key if they matter"
            )
            warnings.warn(f"{model}: {msg}", stacklevel=3)
            notes.append(msg)
        value = per_layer[0]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{model}: {field} must be a positive integer, got {value!r}")
    return value


def _read(config: Any, names: tuple[str, ...], model: str, notes: list[str]) -> int:
    """The first of ``names`` that ``config`` holds (:func:`_find_moe_config` checked that one does)."""
    name, value = _first(config, names)
    return _scalar(value, name, model, notes)


def _divisors(n: int, limit: int = 64) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _quant_config(*configs: Any) -> dict[str, Any] | None:
    """The first quantization_config found, as a dict (transformers may hold an object)."""
    for config in configs:
        qc = _get(config, "quantization_config")
        if qc:
            return dict(qc) if isinstance(qc, Mapping) else qc.to_dict()
    return None


def _model_float_dtype(*configs: Any) -> str:
    """bf16 or fp16 from the config.json's dtype (transformers 5's name) or torch_dtype (the name most published
    files use). Read from the file's values: the config classes warn on every read of torch_dtype. float32
    checkpoints are served in bf16."""
    for config in configs:
        for name in ("dtype", "torch_dtype"):
            value = _get(config, name)
            if value is not None:
                text = str(value).removeprefix("torch.")
                return "fp16" if text in ("float16", "half") else "bf16"
    return "bf16"


def _block_shape(qc: dict[str, Any] | None) -> tuple[int, int] | None:
    block = (qc or {}).get("weight_block_size")
    return (int(block[0]), int(block[1])) if block else None


def _resolve_dtype(dtype: str, configs: tuple[Any, ...], notes: list[str]) -> tuple[str, tuple[int, int] | None]:
    qc = _quant_config(*configs)
    method = str((qc or {}).get("quant_method", "")).lower()
    if dtype == "fp8_w8a8":
        return dtype, _block_shape(qc)  # the model's own fp8 blocks if it has them, else per-tensor
    if dtype != "auto":
        return dtype, None
    if method == "fp8":
        return "fp8_w8a8", _block_shape(qc)
    float_dtype = _model_float_dtype(*configs)
    if method == "mxfp4":
        # gpt-oss ships mxfp4 experts; this kernel has no mxfp4 path, so "auto" tunes the
        # unquantized bf16 kernel (what the model runs as once dequantized).
        notes.append(f"model weights are mxfp4, which the kernel does not support; tuned as {float_dtype}")
    elif method:
        notes.append(f"quantization {method!r} is not supported by the kernel; tuned as {float_dtype}")
    return float_dtype, None


def kernel_shape(
    model: str | Path,
    tp_size: int = 1,
    expert_parallel: bool = False,
    dtype: str = "auto",
    prefix: str | None = None,
    trust_remote_code: bool = False,
) -> ModelShape:
    """The fused-MoE shape one GPU runs for ``model`` at ``tp_size`` (see the module docstring).

    ``dtype="auto"`` follows the model: fp8 checkpoints (``quant_method: fp8``) give ``fp8_w8a8``
    with their ``weight_block_size``; otherwise bf16, or fp16 for float16 checkpoints. An explicit
    dtype from :data:`ALLOWED_DTYPES` is used as given (``fp8_w8a8`` keeps the model's fp8 block
    shape if it has one, else per-tensor scales).

    Every field is read from the config.json's own values (see the module docstring), so no config
    class is built and no remote code runs: ``trust_remote_code`` matters to :func:`load_model_config`
    only, and is accepted here so one model entry serves both.
    """
    model = str(model)
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive integer, got {tp_size!r}")
    if dtype not in ALLOWED_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(ALLOWED_DTYPES)}; got {dtype!r}")

    source = _locate(model)
    root = source.values
    config = _descend(root, prefix, model) if prefix else root
    moe_config, family = _find_moe_config(config, model, source, prefix)

    notes: list[str] = []
    num_experts = _read(moe_config, family.experts, model, notes)
    topk = _read(moe_config, family.topk, model, notes)
    intermediate = _read(moe_config, family.intermediate, model, notes)
    hidden = _read(moe_config, family.hidden, model, notes)
    if num_experts < 2:
        raise ValueError(f"{model}: {num_experts} expert per layer is not a Mixture-of-Experts model")

    if expert_parallel:
        ep = tp_size
        if num_experts % ep:
            raise ValueError(
                f"{model}: {num_experts} experts do not split evenly over ep={ep} "
                f"(expert parallel uses ep = tp_size); ep sizes that work: {_divisors(num_experts)}"
            )
        E, N = num_experts // ep, intermediate
    else:
        if intermediate % tp_size:
            raise ValueError(
                f"{model}: expert intermediate size I={intermediate} is not divisible by tp={tp_size}; "
                f"tp sizes that work: {_divisors(intermediate)}"
            )
        E, N = num_experts, intermediate // tp_size

    kernel_dtype, block = _resolve_dtype(dtype, (moe_config, config, root), notes)
    if block is not None and not expert_parallel and N % block[0]:
        # Engines refuse a shard whose weight rows split a quantization block.
        fits = [tp for tp in _divisors(intermediate) if (intermediate // tp) % block[0] == 0]
        raise ValueError(
            f"{model}: at tp={tp_size} each GPU holds N={N} rows of the expert, not a multiple of the fp8 block "
            f"{block[0]}; tp sizes that work: {fits}"
        )
    shape = ModelShape(
        model=model,
        tp_size=tp_size,
        expert_parallel=bool(expert_parallel),
        E=E,
        N=N,
        K=hidden,
        topk=topk,
        dtype=kernel_dtype,
        block_shape=block,
        num_experts=num_experts,
        intermediate_size=intermediate,
        model_type=_get(moe_config, "model_type") or _get(root, "model_type") or None,
        note="; ".join(notes) or None,
    )
    _ = shape.kernel  # validates dtype/block combinations now, not when the key is first used
    return shape
