"""Course helpers: support for the notebooks, not part of the reusable library.

The rest of :mod:`kd_lib` is the library a reader copies into their own work; the modules here
only serve the course's notebooks:

- :mod:`kd_lib.course.digits`: notebook 03's handwritten-digits demo -- the data split, tiny MLPs
  and CNNs, one training loop for cross-entropy and distillation, and saving the teacher's logits
  to a file;
- :mod:`kd_lib.course.widgets`: the interactive widgets of notebooks 01 and 08 (ipywidgets +
  matplotlib), each with a static twin for notebooks read without a live kernel;
- :mod:`kd_lib.course.exercises`: the exercises' ``check_…`` functions, one module per notebook
  (``nb01`` … ``nb12``), answering ✓ or ✗ with a hint about the likely mistake.
"""
