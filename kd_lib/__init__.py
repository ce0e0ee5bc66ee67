"""kd_lib: the tested library behind the knowledge-distillation course.

Modules: :mod:`kd_lib.losses` (temperature softmax, KD losses), :mod:`kd_lib.data` (offline
SST-2 and AG News), :mod:`kd_lib.models` (the packaged teacher), :mod:`kd_lib.check`
(environment check), :mod:`kd_lib.utils` (seeding, atomic writes, quiet loading).
"""

from kd_lib.losses import distillation_loss, kd_loss, softmax_t

__version__ = "0.1.0"
__all__ = ["__version__", "distillation_loss", "kd_loss", "softmax_t"]
