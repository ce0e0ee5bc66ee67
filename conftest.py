"""Test-wide settings: notebooks run in their fast mode (``KD_FAST=1``)."""

import os

# Set before any kernel starts, so nbval's notebook kernels inherit it too.
os.environ.setdefault("KD_FAST", "1")
