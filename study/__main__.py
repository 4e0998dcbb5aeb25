"""python -m study: the reproduction study (study/run.py), run from the repository's root."""

import sys

from study.run import cli

cli(sys.argv[1:])
