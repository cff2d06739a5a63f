"""Training: the optimizer, the compiled step and epoch, the run loop and its files.

``optim`` (optax optimizer and schedule) -> ``step`` (train step, epoch, predict) ->
``history`` (per-epoch rows, best epoch) -> ``checkpoints`` and ``digits_jax.rundir`` (a run's
files) -> ``loop`` (epochs, validation, resume) and ``groups`` (vmapped models).
"""
