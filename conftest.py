"""Test-wide settings, applied before any test or notebook kernel starts (kernels inherit them).

- ``KD_FAST=1``: notebooks shrink their data and steps to run in seconds.
- ``KD_CACHE_DIR``: a fresh temporary folder for this test session, so tests never reuse (or
  pollute) the user's cache of fine-tuned teachers; the notebooks and the end-to-end tests of
  one session share it, so the small test teacher is fine-tuned once.
"""

import os
import shutil
import tempfile

os.environ.setdefault("KD_FAST", "1")
_CACHE = tempfile.mkdtemp(prefix="kd-test-cache-")
os.environ["KD_CACHE_DIR"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
