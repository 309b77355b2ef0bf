"""The ground floor: infrastructure every layer may use and that imports no other part of
reid-tf.

* :mod:`~reid_tf.runtime.distribute` — ``tf.distribute`` strategies (``--strategy``), per-replica
  batches, all-gathers and cross-replica moments, chief/worker output folders;
* :mod:`~reid_tf.runtime.environment` — seeds, op determinism and the mixed-precision policy of
  a run;
* :mod:`~reid_tf.runtime.checkpoints` — reading PyTorch/numpy state dicts and assigning their
  tensors to Keras variables with a report.
* :mod:`~reid_tf.runtime.files` — files written whole or not at all (temporary file, ``fsync``,
  ``os.replace``) and their SHA-256;
* :mod:`~reid_tf.runtime.locks` — the run-folder lock (``RUN/.run.lock``, ``fcntl.flock``);
* :mod:`~reid_tf.runtime.faults` — the fault injection of the tests
  (``REID_TF_FAULT_INJECTION``);
* :mod:`~reid_tf.runtime.errors` — the errors the command lines print as one line.
"""
