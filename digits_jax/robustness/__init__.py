"""Robustness of trained networks: corrupted digits (MNIST-C), adversarial attacks, calibration
and cost."""
