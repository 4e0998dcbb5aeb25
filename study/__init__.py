"""The reproduction study: run.py (stages, runs), verdicts.py (statistics, gates, write-up),
baselines.py (merges and 4-bit NOLA, used by the study only). Run it with `python -m study`."""
