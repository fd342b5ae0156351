"""Snakemake adapter: the configs verify chose -> engine config files (moekernel.pipeline.emit)."""

import json
import sys
from pathlib import Path

from _common import setup

log = setup(snakemake)

from moekernel.pipeline import emit, jobs  # after setup: moekernel from this checkout

shards = [s for record in snakemake.input.tuned for s in jobs.read_record(record)["shards"].values()]
out = Path(snakemake.output[0])
try:
    published = emit.emit_from_verify(shards, list(snakemake.input.verified), snakemake.params.folder)
except emit.EmitError as exc:
    # A clear stop, not a traceback: the message names the keys that clash. No file was touched.
    log.error("%s", exc)
    sys.exit(f"select: {exc}")
for what, names in published.items():
    for name in names:
        log.info("%s: %s", what, name)
out.write_text(json.dumps(published, indent=2) + "\n")
