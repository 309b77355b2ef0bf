"""Training: the one GradientTape trainer, optimisers, schedules, EMA and the run driver.

Import the submodules directly (``reid_tf.training.trainer``, ``.optimizers``, ``.schedules``,
``.ema``, ``.run``); this package module stays light.
"""
