"""A run's reports and comparisons: ``metrics`` and ``plots`` -> ``report`` (a run's files)
and ``visualize``; ``compare`` (intervals, paired tests and verdicts between runs)."""
