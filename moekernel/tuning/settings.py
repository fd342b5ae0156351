"""The tune settings: one typed object from config.yaml (or the command line) to the tuner and the shard columns.

Everything here changes what a tune job measures, so the pipeline re-plans a job whose settings changed; how the
job runs (compile workers, progress bars) is not a setting. The pipeline builds one :class:`TuneSettings` from its
config, the tune job passes it on the command line (:meth:`TuneSettings.cli_args`, read back by
:meth:`TuneSettings.from_cli`), and the tuner writes it into every shard row (:meth:`TuneSettings.columns`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..backend import BACKENDS
from .space import load_space, shape_problem
from .strategies import describe, get_strategy

#: Draws the tuner may use; verify's held-out draws start above (moekernel.kernel.testing.HELD_OUT_DRAW).
MAX_DRAWS = 100


@dataclass(frozen=True)
class TuneSettings:
    strategy: str = "fast"  # exhaustive, fast, or fast:eta=4,radius=2,...
    space: str = "vllm"  # 'vllm', a JSON object, or a JSON file (a mapping is kept as canonical JSON text)
    split: bool = False  # tune the up and down GEMMs separately (winners share BLOCK_SIZE_M)
    iters: int = 20  # CUDA-graph replays per finalist
    draws: int = 3  # routing draws the finalists are timed on; the winner is best by mean and worst case
    routing: str = "uniform"  # uniform, zipf:<s>, or a .npy/.pt file of recorded top-k ids
    seed: int = 0  # seed of the random inputs
    backend: str = "auto"  # auto, cuda or interpret

    def __post_init__(self):
        if isinstance(self.space, Mapping):
            object.__setattr__(self, "space", canonical_space(self.space, self.scopes))
        for name, low, high in (("iters", 1, None), ("draws", 1, MAX_DRAWS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
                raise ValueError(f"{name} must be an integer in {low}..{high or 'any'}, got {value!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be {', '.join(BACKENDS)}; got {self.backend!r}")
        self.strategy_obj, self.search_space  # noqa: B018 - a bad strategy or space fails here, not mid-job

    @cached_property
    def strategy_obj(self):
        return get_strategy(self.strategy)

    @cached_property
    def search_space(self) -> dict[str, list[int]]:
        return load_space(self.space, self.scopes)

    @property
    def scopes(self) -> tuple[str, ...]:
        return gemm_scopes(self.split)

    def check_fits(self, shape) -> None:
        """ValueError if the search space cannot tune ``shape`` at all (``space.shape_problem``): said before a job
        starts, not found in a shard of pruned rows."""
        problem = shape_problem(shape, self.search_space)
        if problem:
            raise ValueError(problem)

    def replace(self, **changes) -> "TuneSettings":
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The fields, as plain values (a rule's params; ``TuneSettings(**d)`` gives the settings back)."""
        return dataclasses.asdict(self)

    def columns(self) -> dict:
        """The shard columns these settings fill (besides the resolved ``backend``)."""
        return {"routing": str(self.routing), "strategy": describe(self.strategy_obj), "seed": self.seed,
                "settings": json.dumps(self.as_dict(), sort_keys=True)}

    # -- the command line: the one place that maps fields to options ------------------------------------------

    _HELP = {
        "strategy": "exhaustive, fast, or fast:eta=4,radius=2,...",
        "space": "'vllm', or a JSON object / file of parameter -> values",
        "split": "tune the up and down GEMMs separately",
        "iters": "CUDA-graph replays timed per finalist",
        "draws": "routing draws each finalist is timed on (1: the tuning draw only)",
        "routing": "uniform, zipf:<s>, or a .npy/.pt file of top-k ids",
        "seed": "seed of the random inputs",
        "backend": "auto (CUDA if there is a GPU), cuda or interpret",
    }

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(flag, action="store_true", help=cls._HELP[f.name])
            else:
                kind = int if f.type == "int" else str
                choices = BACKENDS if f.name == "backend" else None
                parser.add_argument(flag, type=kind, default=f.default, choices=choices, help=cls._HELP[f.name])

    @classmethod
    def from_cli(cls, namespace: argparse.Namespace) -> "TuneSettings":
        return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})

    def cli_args(self) -> list[str]:
        """The tune command's options for these settings (only those that differ from the defaults)."""
        args = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            args += [flag] if f.type == "bool" else [flag, str(value)]
        return args


def gemm_scopes(split: bool) -> tuple[str, ...]:
    """The gemm scopes a job tunes: the whole op, or the up and down GEMMs separately."""
    return ("up", "down") if split else ("both",)


def canonical_space(space, scopes: tuple[str, ...] = ("both",)) -> str:
    """A search space as text that changes exactly when its content does: a name as is, a mapping or the content of
    a .json file as sorted, compact JSON. Checked with the tuner's reader for the gemm ``scopes`` it will tune
    (ValueError naming what is wrong)."""
    if isinstance(space, str) and space.endswith(".json") and not space.lstrip().startswith("{"):
        path = Path(space)
        if not path.is_file():
            raise ValueError(f"search space file {space!r} does not exist")
        try:
            space = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"search space file {space!r} is not valid JSON ({exc})") from None
    load_space(space, scopes)
    if isinstance(space, Mapping):
        return json.dumps({k: v for k, v in space.items()}, sort_keys=True, separators=(",", ":"))
    return space
