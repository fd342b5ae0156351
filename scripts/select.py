"""Snakemake adapter: tuning shards -> engine config files (moekernel.pipeline.emit)."""

import sys

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import emit  # after setup: moekernel from this checkout

try:
    paths = emit.emit_from_shards(list(snakemake.input), snakemake.output[0])
except emit.EmitError as exc:
    # A clear stop, not a traceback: the message names the keys that clash.
    log.error("%s", exc)
    sys.exit(f"select: {exc}")
for path in paths:
    log.info("wrote %s", path)
