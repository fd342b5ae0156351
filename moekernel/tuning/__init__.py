"""The tuner: search the launch configs of one kernel shape at one batch size, write every timing to a shard.

Public surface::

    tune(shape, batch_size, settings, ...) -> pandas.DataFrame   one job (CLI: python -m moekernel.tune)
    tune_batch_sizes(shape, sizes, settings, ...) -> {M: frame}  one job per batch size, in one process
    TuneSettings                                                 what a job's result depends on
    load_space, prune, VLLM_SPACE, PARAMS, Candidate             the search space and its pruning rules
    STRATEGIES, get_strategy                                     how the space is searched
    SCHEMA, COLUMNS, STATUSES, read_shard, write_shard           the shard format
    compile_configs, precompile                                  parallel compiling into Triton's cache

Modules: ``settings``, ``space``, ``strategies``, ``seeds`` (where a fast search starts), ``compile``, ``measure``
(compile, time and checkpoint one job's candidates), ``select`` (verify and pick the winner), ``job`` (one job end
to end), ``shard``, ``tuner`` (the entry points above). The timing method is ``moekernel.kernel.timing``.
"""

from .compile import compile_configs
from .measure import EXIT_RESUME, ContextPoisoned
from .settings import TuneSettings
from .shard import COLUMNS, SCHEMA, STATUSES, read_shard, write_shard
from .space import PARAMS, VLLM_SPACE, Candidate, load_space, prune
from .strategies import STRATEGIES, Exhaustive, Fast, get_strategy
from .tuner import precompile, tune, tune_batch_sizes

__all__ = [
    "tune", "tune_batch_sizes", "precompile", "TuneSettings", "load_space", "prune", "VLLM_SPACE", "PARAMS",
    "Candidate", "SCHEMA", "COLUMNS", "STATUSES", "read_shard", "write_shard", "compile_configs", "STRATEGIES",
    "Exhaustive", "Fast", "get_strategy", "ContextPoisoned", "EXIT_RESUME",
]  # fmt: skip
