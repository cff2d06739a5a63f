"""Recipe search: an Optuna study over Config fields, with pruning, shared by workers.

:mod:`~digits_jax.search.space` describes and checks what is searched,
:mod:`~digits_jax.search.study` runs the trials (each an ordinary run directory) from a
study kept in the workdir, :mod:`~digits_jax.search.report` writes the tables and plots,
and :mod:`~digits_jax.search.confirm` retrains the best trials on fresh seeds and
compares them with the model's registered recipe. See docs/search.md.
"""
