"""Lets any test file run alone (`pytest tests/test_model.py`): the project's modules live in the
repository root and the shared test helpers in tests/helpers.py."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)
