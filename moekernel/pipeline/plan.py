"""The pipeline's plan: validate config.yaml, resolve models to kernel keys, list the tune jobs.

``rules/common.smk`` calls :func:`make_plan` once while Snakemake parses the workflow. Everything a
tune job's result depends on ends up in :attr:`Plan.settings` (a :class:`TuneSettings`) and
:attr:`Plan.kernel_hash`, which the tune rule passes as params: Snakemake re-runs a job whose params
changed, so changing search/timing settings or the kernel source re-runs exactly the affected tune
jobs, and nothing else does. Planning needs neither torch nor triton.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jsonschema
import yaml

from moekernel.configs import config_file_name
from moekernel.shapes import KernelShape
from moekernel.tuning.settings import TuneSettings, canonical_space, gemm_scopes
from moekernel.tuning.space import load_space, shape_problem
from moekernel.tuning.strategies import get_strategy

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema" / "config.schema.yaml"
DEMO_MODEL = "demo"


class ConfigError(Exception):
    """A problem with config.yaml or the models it names; the message is meant for the user as is."""


# ---------------------------------------------------------------- config validation


def _with_defaults(validator_class):
    """A validator class that fills in each property's ``default`` before checking it."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the key, the bad value and what is allowed."""
    key = _where(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "enum":
        allowed = ", ".join(str(x) for x in error.validator_value)
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {allowed}"
    if v == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return f"unknown config key(s) {', '.join(repr(_where([*error.absolute_path, x])) for x in extra)}; allowed keys here: {', '.join(known)}"
    if v == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        where = "" if not error.absolute_path else f" under '{key}'"
        return f"missing required config key(s) {', '.join(map(repr, missing))}{where}"
    if v in ("oneOf", "anyOf"):
        # A value of the right kind but wrong content (a mapping with a misspelt parameter, say):
        # the error from inside that branch says more than "matches none of". Branches that
        # failed only because the value is of another kind say nothing useful.
        kind_only = ("type", "enum", "pattern")
        deeper = [e for e in error.context
                  if len(e.absolute_path) > len(error.absolute_path) or e.validator not in kind_only]
        if deeper:
            return _describe(jsonschema.exceptions.best_match(deeper))
        what = schema.get("description") or " or ".join(json.dumps(s) for s in error.validator_value)
        return f"config key '{key}': {error.instance!r} is not valid; expected {what}"
    if v == "pattern":
        what = schema.get("description") or f"a string matching {error.validator_value}"
        return f"config key '{key}': {error.instance!r} is not valid; expected {what}"
    return f"config key '{key}': {error.message}"


def read_yaml(path) -> dict:
    """A config file's mapping; a YAML error names the file, line and column."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file holds a mapping of keys (models: ..., tp_sizes: ...)")
    return data


def load_schema(schema_path: Path = SCHEMA_PATH) -> dict:
    """The config schema, with the lists that code owns filled in (the dtypes of moekernel.models)."""
    from moekernel.models import ALLOWED_DTYPES

    schema = yaml.safe_load(Path(schema_path).read_text())
    schema["$defs"]["dtype"]["enum"] = list(ALLOWED_DTYPES)
    return schema


def load_config(config: dict, schema_path: Path = SCHEMA_PATH) -> dict:
    """Return a validated deep copy of ``config`` with every default filled in, or raise ConfigError."""
    schema = load_schema(schema_path)
    config = copy.deepcopy(dict(config))
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors] + _content_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid pipeline config:\n{lines}")
    # Mapping entries normalise to one form; strings keep the catalog/hub/folder name.
    config["models"] = [m if isinstance(m, dict) else {"name": m, "prefix": None, "trust_remote_code": False}
                        for m in config["models"]]
    return config


def _content_problems(config: dict) -> list[str]:
    """What the schema cannot check because code owns the list (strategies and their options)."""
    problems = []
    strategy = config.get("search", {}).get("strategy")
    if isinstance(strategy, str):
        try:
            get_strategy(strategy)
        except ValueError as exc:
            problems.append(f"config key 'search.strategy': {exc}")
    return problems


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    demo: bool                        # no CUDA device: a tiny demo shape replaces the models
    shapes: list[dict]                # rows of the `shapes` table
    keys: list[str]                   # unique kernel keys, in config order
    batch_sizes: list[int]
    settings: TuneSettings            # everything a tune job's result depends on, besides key, M and the kernel
    kernel_hash: str                  # the kernel sources' hash (moekernel.provenance)
    config: dict                      # the validated config, defaults filled in
    gpus: list[str] = field(default_factory=list)  # GPU models to tune for, as engines spell them (NVIDIA_H200)
    software: dict = field(default_factory=dict)   # {"triton": version, "torch": version} the jobs must run with
    requested_keys: list[str] = field(default_factory=list)  # what a GPU would tune (shown in demo mode)

    @property
    def backend(self) -> str:
        """Resolved: cuda | interpret."""
        return self.settings.backend

    # One tune job per (GPU model, key) tunes every batch size in one warm process. Its shards are not the job's
    # outputs, so Snakemake never deletes them (it removes a job's outputs before running it): the output is the
    # job's record of the shards it answered for (tuned.json), and a rerun keeps every shard of the same job.

    def shard(self, gpu: str, key: str, batch_size: int | str) -> str:
        return f"{self.shard_folder(gpu, key)}/bs{batch_size}.parquet"

    def shard_folder(self, gpu: str, key: str) -> str:
        return f"results/timings/{gpu}/{key}"

    def tuned(self, gpu: str, key: str) -> str:
        """The tune job's output: the record of the shards it answered for."""
        return f"{self.shard_folder(gpu, key)}/tuned.json"

    def verified(self, gpu: str, key: str) -> str:
        return f"results/verify/{gpu}/{key}.parquet"

    def jobs(self) -> list[tuple[str, str]]:
        """(GPU model, key) of every tune job."""
        return [(g, k) for g in self.gpus for k in self.keys]

    def tuned_records(self) -> list[str]:
        return [self.tuned(g, k) for g, k in self.jobs()]

    def verify_results(self) -> list[str]:
        return [self.verified(g, k) for g, k in self.jobs()]

    def shards(self) -> list[str]:
        return [self.shard(g, k, m) for g, k in self.jobs() for m in self.batch_sizes]

    def constraint(self, gpu: str) -> str | None:
        """The SLURM constraint (node feature) that selects GPU model ``gpu``, or None where none is configured."""
        return self.config["gpu_constraints"].get(gpu)

    def meta(self) -> dict:
        """The run's settings, for the database's ``meta`` table."""
        return {"demo": self.demo, **self.settings.as_dict(), "kernel_hash": self.kernel_hash,
                "gpus": ",".join(self.gpus), **{f"{name}_version": v for name, v in self.software.items()}}

    def banner(self) -> str | None:
        if self.demo:
            bar = "!" * 78
            return "\n".join([
                bar,
                "!! NO CUDA DEVICE: DEMO RUN IN THE TRITON INTERPRETER (backend: auto)",
                f"!! Tuning the tiny demo shape {', '.join(self.keys)} at batch sizes {self.batch_sizes}",
                f"!! instead of {', '.join(self.requested_keys)}.",
                "!! Timings are meaningless; configs are written for a 'cpu-interpreter' device and",
                "!! can never pass for GPU configs. Run on a GPU machine (or backend: cuda) for real ones.",
                bar,
            ])
        if self.backend == "interpret":
            return "!! backend: interpret -- Triton interpreter on the CPU; timings are meaningless."
        return None


def _space_arg(space, split: bool, config_key: str, kernel_keys: list[str]) -> str:
    """The --space argument, checked now (its values, and that it can tune each kernel key) so a bad space stops the
    run before any job starts."""
    scopes = gemm_scopes(split)
    try:
        text = canonical_space(space, scopes)
        loaded = load_space(text, scopes)
    except ValueError as exc:
        raise ConfigError(f"config key '{config_key}': {exc}") from None
    problems = [shape_problem(KernelShape.from_key(k), loaded) for k in kernel_keys]
    if any(problems):
        raise ConfigError(f"config key '{config_key}': " + "; ".join(p for p in problems if p))
    return text


def routing_file(routing: str) -> str | None:
    """The recorded top-k ids file, if routing names one (an input of every tune job)."""
    return None if routing == "uniform" or routing.startswith("zipf:") else routing


def resolve_shapes(config: dict, kernel_shape: Callable) -> list[dict]:
    """One row per (model, tp, dtype); errors from moekernel.models become one ConfigError."""
    rows = []
    for entry in config["models"]:
        for tp in config["tp_sizes"]:
            for dtype in config["dtypes"]:
                try:
                    s = kernel_shape(entry["name"], tp_size=tp, expert_parallel=config["expert_parallel"],
                                     dtype=dtype, prefix=entry.get("prefix"),
                                     trust_remote_code=entry.get("trust_remote_code", False))
                except Exception as exc:  # models raises plain, clear errors: pass their text on
                    raise ConfigError(f"model {entry['name']!r} (tp_size={tp}, dtype={dtype}): {exc}") from exc
                rows.append(shape_row(entry["name"], tp, config["expert_parallel"], dtype, s))
    return rows


def shape_row(model: str, tp: int, ep: bool, dtype: str, s) -> dict:
    block = f"{s.block_shape[0]}x{s.block_shape[1]}" if s.block_shape else None
    return {"model": model, "tp": tp, "ep": bool(ep), "dtype": dtype, "key": s.key,
            "E": s.E, "N": s.N, "K": s.K, "topk": s.topk, "kernel_dtype": s.dtype, "block_shape": block,
            "note": getattr(s, "note", None)}


def unique_keys(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["key"] for r in rows))


def check_file_collisions(keys: list[str]) -> None:
    """Engine file names lack K and top-k (and bf16/fp16): two such keys would share one file.

    Checked before any tuning so hours are not spent on configs that could not both be written.
    """
    seen: dict[str, str] = {}
    for key in keys:
        s = KernelShape.from_key(key)
        name = config_file_name(s.E, s.N, s.config_dtype, s.block_shape, device_name="any")
        if name in seen:
            raise ConfigError(
                f"kernel keys {seen[name]} and {key} would be written to the same engine config file "
                f"(E={s.E}, N={s.N}, dtype={s.config_dtype or 'bf16/fp16'}, block_shape={s.block_shape}); "
                "the file name has no K or top-k. Tune them in separate runs (separate --directory).")
        seen[name] = key


def resolve_gpus(requested: list[str], backend: str, visible: list[str]) -> list[str]:
    """The GPU models to tune for: ``auto`` means the models of the GPUs this host sees (in the interpreter: the
    interpreter's device name)."""
    from moekernel.configs import interpreter_device_name

    if "auto" not in requested:
        return list(dict.fromkeys(requested))
    if backend == "interpret":
        return [interpreter_device_name()]
    if not visible:
        raise ConfigError("config key 'gpus': auto means the GPU models this host sees, and it sees none; name the "
                          "models to tune for as engines spell them, e.g. gpus: [NVIDIA_H200] (on a cluster's login "
                          "node, the models of its GPU nodes)")
    return list(dict.fromkeys(visible))


def make_plan(config: dict, *, cuda_available: bool, gpu_models: list[str] | None = None,
              kernel_shape: Callable | None = None, kernel_hash: str | None = None,
              schema_path: Path = SCHEMA_PATH) -> Plan:
    """Validated config → the list of kernel keys and batch sizes to tune, and the settings they share.

    ``gpu_models``: the models of the GPUs this host sees, as engines spell them (None: NVIDIA_H200 for each, a
    stand-in for tests that plan without a GPU)."""
    config = load_config(config, schema_path)
    if kernel_shape is None:
        from moekernel.models import kernel_shape
    if kernel_hash is None:
        # The hash of the kernel sources (also stored in every shard row): a kernel change re-runs every tune
        # job, a tuner-only change none.
        from moekernel.provenance import kernel_hash as source_hash

        kernel_hash = source_hash()
    baseline = config.get("baseline_configs")
    if baseline is not None and not Path(baseline).is_dir():
        raise ConfigError(f"config key 'baseline_configs': {baseline!r} is not a folder (a folder of engine config "
                          "files, e.g. vLLM's fused_moe/configs, or null)")
    rows = resolve_shapes(config, kernel_shape)
    requested = unique_keys(rows)
    check_file_collisions(requested)  # in demo mode too: the config would fail on a GPU

    backend = config["backend"]
    demo = backend == "auto" and not cuda_available
    if backend == "auto":
        backend = "cuda" if cuda_available else "interpret"

    strategy, space, iters = config["search"]["strategy"], config["search"]["space"], config["timing"]["iters"]
    space = _space_arg(space, config["split"], "search.space", requested)  # in demo mode too: it would fail on a GPU
    batch_sizes = list(config["batch_sizes"])
    if demo:
        d = config["demo"]
        try:
            shape = KernelShape.from_key(d["shape"])
        except ValueError as exc:
            raise ConfigError(f"config key 'demo.shape': {exc}") from exc
        rows = [shape_row(DEMO_MODEL, 1, False, shape.dtype, shape)]
        space = _space_arg(d["space"], config["split"], "demo.space", [shape.key])
        strategy, iters, batch_sizes = "exhaustive", d["iters"], list(d["batch_sizes"])
    keys = unique_keys(rows)

    try:
        settings = TuneSettings(strategy=strategy, space=space, split=config["split"], iters=iters,
                                draws=config["timing"]["draws"], routing=config["routing"], seed=config["seed"],
                                backend=backend)
    except ValueError as exc:  # everything was checked above; this names what slipped through
        raise ConfigError(f"invalid tune settings: {exc}") from None
    if gpu_models is None:
        gpu_models = ["NVIDIA_H200"] if cuda_available else []
    from moekernel.provenance import software

    return Plan(demo=demo, shapes=rows, keys=keys, batch_sizes=sorted(batch_sizes), settings=settings,
                kernel_hash=kernel_hash, config=config, gpus=resolve_gpus(config["gpus"], backend, gpu_models),
                software=software(), requested_keys=requested)
