"""What every script of the workflow does first (Snakemake puts this folder on the scripts' path).

``setup(snakemake)``: moekernel is imported from this checkout (the one whose Snakefile runs), and the job's stderr,
logging and any traceback go to the rule's log, so a failed job's log says why.
"""

import logging
import os
import sys
from pathlib import Path


def setup(snakemake) -> logging.Logger:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    log = open(snakemake.log[0], "w", buffering=1)
    os.dup2(log.fileno(), 2)  # child processes and C-level warnings too
    sys.stderr = log
    logging.basicConfig(stream=log, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return logging.getLogger(snakemake.rule)
