"""Snakemake adapter: tuning shards -> engine config files (moekernel.emit)."""

import logging
import sys

from moekernel import emit

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO, format="%(levelname)s %(message)s")
try:
    paths = emit.emit_from_shards(list(snakemake.input), snakemake.output[0])
except emit.EmitError as exc:
    # A clear stop, not a traceback: the message names the keys that clash.
    logging.error("%s", exc)
    sys.exit(f"select: {exc}")
for path in paths:
    logging.info("wrote %s", path)
