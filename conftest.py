"""Test-wide settings, applied before any test or notebook kernel starts (kernels inherit them).

- ``KD_FAST=1``: notebooks shrink their data and steps to run in seconds.
- ``KD_CACHE_DIR``: a fresh temporary folder for this test session, so tests never reuse (or
  pollute) the user's cache of fine-tuned teachers; the notebooks and the end-to-end tests of
  one session share it, so the small test teacher is fine-tuned once.
- Under pytest-xdist (``make test`` runs ``pytest -n auto --dist loadfile``): the workers share the
  controlling process's cache folder (two workers asking for one teacher train it once: the cache's
  lock), and each worker gets its share of the CPUs as torch threads (``OMP_NUM_THREADS``, which
  notebook kernels and subprocesses inherit), so two workers on two cores do not fight over them.
"""

import os
import shutil
import tempfile

os.environ.setdefault("KD_FAST", "1")
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # set by xdist before a worker reads this file
if _WORKER and os.environ.get("KD_TEST_CACHE_DIR"):
    _CACHE = os.environ["KD_TEST_CACHE_DIR"]  # the controlling process's folder, inherited
else:
    _CACHE = tempfile.mkdtemp(prefix="kd-test-cache-")
    os.environ["KD_TEST_CACHE_DIR"] = _CACHE
os.environ["KD_CACHE_DIR"] = _CACHE
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_sessionfinish(session, exitstatus):
    if not _WORKER:  # the controlling (or only) process, after every worker has finished
        shutil.rmtree(_CACHE, ignore_errors=True)
