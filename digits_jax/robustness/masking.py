"""Guards against gradient masking: checks that a robust accuracy is not an artefact of it.

:func:`masking_checks` follows Carlini et al., 2019 ("On evaluating adversarial robustness"):
accuracy never rises with ``eps``, PGD is never weaker than FGSM, an unbounded attack leaves
nothing, and the attack's loss rises over its steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
  return {"check": name, "passed": bool(passed), "detail": detail}


def _never_rises(name: str, clean: float, accuracy: Mapping[float, float], tol: float):
  sequence = [(0.0, float(clean))] + sorted((float(e), float(a)) for e, a in accuracy.items())
  rises = [
    f"{a0:.2%} at eps {e0:g} -> {a1:.2%} at eps {e1:g}"
    for (e0, a0), (e1, a1) in zip(sequence, sequence[1:])
    if a1 > a0 + tol
  ]
  text = ", ".join(f"eps {e:g}: {a:.2%}" for e, a in sequence)
  detail = f"rises: {'; '.join(rises)} ({text})" if rises else text
  return _check(f"{name} robust accuracy never rises with eps", not rises, detail)


def masking_checks(
  clean_accuracy: float,
  fgsm_acc: Mapping[float, float],
  pgd_acc: Mapping[float, float],
  pgd_losses: Mapping[float, Sequence[float]],
  acc_at_eps1: float | None,
  *,
  num_images: int | None = None,
) -> list[dict[str, Any]]:
  """Checks that a robust accuracy is not an artefact of gradient masking.

  Masked or obfuscated gradients make an attack look weak: its accuracy rises with ``eps``,
  one FGSM step beats many PGD steps, an unbounded attack (``eps = 1``, any image) leaves
  correct predictions, or the loss the attack climbs does not rise. Comparisons allow one
  image's worth of accuracy (``1 / num_images``) for the randomness of the starts; without
  ``num_images`` they are exact.

  Args:
    clean_accuracy: accuracy on the unperturbed images (the value at ``eps = 0``).
    fgsm_acc: FGSM's accuracy per radius (may be empty).
    pgd_acc: PGD's accuracy per radius.
    pgd_losses: PGD's mean loss after each step, per radius (may be empty).
    acc_at_eps1: PGD's accuracy at ``eps = 1``, or ``None`` when not measured.
    num_images: the number of images the accuracies are measured on.

  Returns:
    One ``{"check", "passed", "detail"}`` dictionary per check that has its data.
  """
  tol = 1.0 / num_images if num_images else 0.0
  checks = [_never_rises("PGD", clean_accuracy, pgd_acc, tol)]
  if fgsm_acc:
    checks.append(_never_rises("FGSM", clean_accuracy, fgsm_acc, tol))
  common = sorted(set(map(float, fgsm_acc)) & set(map(float, pgd_acc)))
  if common:
    pgd_by, fgsm_by = _by_float(pgd_acc), _by_float(fgsm_acc)
    weaker = [e for e in common if pgd_by[e] > fgsm_by[e] + tol]
    text = ", ".join(f"eps {e:g}: PGD {pgd_by[e]:.2%} vs FGSM {fgsm_by[e]:.2%}" for e in common)
    detail = f"PGD weaker at eps {', '.join(f'{e:g}' for e in weaker)} ({text})" if weaker else text
    checks.append(_check("PGD at least as strong as FGSM", not weaker, detail))
  if acc_at_eps1 is not None:
    checks.append(
      _check(
        "eps = 1 leaves 0% accuracy",
        float(acc_at_eps1) == 0.0,
        f"accuracy at eps 1: {float(acc_at_eps1):.2%}",
      )
    )
  if pgd_losses:
    rows = sorted((float(e), [float(v) for v in losses]) for e, losses in pgd_losses.items())
    falls = [e for e, losses in rows if not losses or losses[-1] < losses[0]]
    text = ", ".join(
      f"eps {e:g}: {losses[0]:.4g} -> {losses[-1]:.4g}" if losses else f"eps {e:g}: no steps"
      for e, losses in rows
    )
    detail = f"loss falls at eps {', '.join(f'{e:g}' for e in falls)} ({text})" if falls else text
    checks.append(_check("attack loss rises over its steps", not falls, detail))
  return checks


def _by_float(accuracy: Mapping[float, float]) -> dict[float, float]:
  return {float(e): float(a) for e, a in accuracy.items()}
