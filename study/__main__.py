"""python -m study: the reproduction study (study/run.py), run from the repository's root."""

import sys

from study.run import cli

# not in the worker processes that train runs side by side: they import this module
if __name__ == '__main__':
    cli(sys.argv[1:])
