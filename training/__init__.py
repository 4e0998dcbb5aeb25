"""train.py's helpers, apart from the loop it shows: the device and its processes (device.py),
and what a run holds on disk while it runs (run.py). The options and the loop stay in train.py."""
