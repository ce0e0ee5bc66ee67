"""kd_lib: the tested library behind the knowledge-distillation course.

The reusable library (what you copy into your own work), one idea per module:

- :mod:`kd_lib.losses` -- pure loss functions on tensors: temperature softmax, KD, feature losses, layer maps
- :mod:`kd_lib.data` -- the offline tasks (SST-2, AG News, Austen), sha256-checked; tokenised datasets
- :mod:`kd_lib.models` -- where a teacher comes from (packaged, folder, hub): ``resolve_teacher``, ``load_teacher``
- :mod:`kd_lib.students` -- students built from teachers: layer choice, BERT → DistilBERT, narrow students
- :mod:`kd_lib.teacher` -- the fine-tuned teacher, trained once per recipe and cached
- :mod:`kd_lib.training` -- the one training loop (settings, optimizer, schedule, ``fit``, checkpoints), prediction
- :mod:`kd_lib.distill` -- distillation objectives: cached logits, live teacher, feature-based
- :mod:`kd_lib.distributed` -- rank, world size, barriers: multi-process state decided in one place
- :mod:`kd_lib.cache` -- cache-or-train with one completion record; teacher-logit caches
- :mod:`kd_lib.trainer` -- distillation inside the ``transformers`` Trainer; memory and time estimates
- :mod:`kd_lib.evaluate`, :mod:`kd_lib.compress` -- measuring fairly; int8 quantization, pruning
- :mod:`kd_lib.pipeline`, :mod:`kd_lib.cli` -- the main job (``python -m kd_lib distill``) and the command line
- applications: :mod:`kd_lib.embeddings`, :mod:`kd_lib.search` (sentence encoders, retrieval),
  :mod:`kd_lib.lm` (language models), :mod:`kd_lib.ensemble`, :mod:`kd_lib.multitask`, :mod:`kd_lib.transfer`
- :mod:`kd_lib.check` (environment check), :mod:`kd_lib.utils` (seeding, atomic writes, hashing, quiet loading)

Course helpers, which only serve the notebooks: :mod:`kd_lib.course` (the digits demo, widgets, and the
exercises' check functions, one module per notebook).
"""

from kd_lib.losses import distillation_loss, kd_loss, softmax_t

__version__ = "0.1.0"
__all__ = ["__version__", "distillation_loss", "kd_loss", "softmax_t"]
