"""The tuner: search the launch configs of one kernel shape at one batch size, write every timing to a shard.

Public surface::

    tune(shape, batch_size, ...) -> pandas.DataFrame     the whole job (CLI: python -m moekernel.tune)
    tune_batch_sizes(shape, sizes, ...) -> {M: frame}    one job per batch size, in one process
    time_callable(fn, ...) -> Timing                     the timing method, shared with bench and verify
    load_space, prune, VLLM_SPACE, PARAMS                the search space and its pruning rules
    SCHEMA, COLUMNS, STATUSES, read_shard, write_shard   the shard format
    compile_configs, precompile                          parallel compiling into Triton's cache
"""

from .compile import compile_configs
from .shard import COLUMNS, SCHEMA, STATUSES, read_shard, write_shard
from .space import PARAMS, VLLM_SPACE, load_space, prune
from .strategies import Exhaustive, Fast, get_strategy
from .timing import Timing, time_callable
from .tuner import EXIT_RESUME, ContextPoisoned, precompile, resolve_backend, tune, tune_batch_sizes

__all__ = [
    "tune", "time_callable", "Timing", "load_space", "prune", "VLLM_SPACE", "PARAMS", "SCHEMA", "COLUMNS",
    "STATUSES", "read_shard", "write_shard", "compile_configs", "Exhaustive", "Fast", "get_strategy",
    "ContextPoisoned", "EXIT_RESUME", "resolve_backend", "precompile", "tune_batch_sizes",
]  # fmt: skip
