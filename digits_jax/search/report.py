"""The tables and plots of a study: ``search.csv``, ``search.md`` and Optuna's figures.

One row per trial (those failed and queued again included, marked so): its number, its
parameters, the validation accuracy at each rung of the pruner, its value (best
validation accuracy), its state, the epoch it was pruned at, and its seconds. The figures
are Optuna's matplotlib visualisations: optimization history, parameter importances
(from two complete trials on; otherwise the reason is written instead) and slices.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from digits_jax import files  # noqa: E402
from digits_jax.search import study as study_lib  # noqa: E402
from digits_jax.search.space import SearchSpec  # noqa: E402

log = logging.getLogger(__name__)

PLOTS = ("optimization_history.png", "param_importances.png", "slice.png")


def rows(study: optuna.Study, spec: SearchSpec) -> list[dict[str, Any]]:
  """One dict per trial, in trial order."""
  out = []
  for t in study.get_trials(deepcopy=False):
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower()}
    if t.user_attrs.get(study_lib.REQUEUED):
      row["state"] = "requeued"
    row |= {p.name: t.params.get(p.name, "") for p in spec.space}
    for epoch in spec.rungs():
      row[f"val@{epoch}"] = t.intermediate_values.get(epoch, "")
    row["val_accuracy"] = t.value if t.value is not None else ""
    row["pruned_at"] = t.user_attrs.get(study_lib.PRUNED_AT, "")
    row["seconds"] = round(t.user_attrs.get("seconds", 0.0), 1) if t.user_attrs else ""
    row["run_dir"] = t.user_attrs.get(study_lib.RUN_DIR, "")
    out.append(row)
  return out


def _fmt(column: str, value: Any) -> str:
  if value == "" or value is None:
    return "-"
  if isinstance(value, float):
    if column.startswith("val"):
      return f"{100 * value:.2f}%"
    if math.isfinite(value) and value and (abs(value) < 1e-2 or abs(value) >= 1e4):
      return f"{value:.3g}"
    return f"{value:.4g}"
  return str(value)


def to_markdown(table: list[dict[str, Any]], spec: SearchSpec, best: Any) -> str:
  columns = list(table[0]) if table else ["trial"]
  lines = [
    f"# Search: {spec.model}",
    "",
    f"{len(table)} trials ({sum(r['state'] == 'requeued' for r in table)} failed and queued "
    f"again; budget {spec.trials}, up to {spec.max_epochs} epochs each); "
    f"TPE sampler, {spec.pruner.replace('_', ' ')} pruner on the validation accuracy at "
    f"epochs {', '.join(map(str, spec.rungs()))}. Value: best validation accuracy; the test "
    "accuracy is not used by the search.",
    "",
    "Space: " + "; ".join(f"{p.name} {p.describe()}" for p in spec.space) + ".",
    "Fixed: " + ", ".join(f"{k}={v}" for k, v in spec.base) + ".",
    "",
  ]
  if best is not None:
    lines += [
      f"Best: trial {best.number}, validation {100 * best.value:.2f}%: "
      + ", ".join(f"{k}={_fmt(k, v)}" for k, v in best.params.items()),
      "",
    ]
  lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_fmt(c, r.get(c)) for c in columns) + " |" for r in table]
  return "\n".join(lines) + "\n"


def to_csv(table: list[dict[str, Any]]) -> str:
  out = io.StringIO()
  if table:
    writer = csv.DictWriter(out, fieldnames=list(table[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
  return out.getvalue()


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  return max(complete, key=lambda t: t.value) if complete else None


def _save(axes: Any, path: Path) -> Path:
  figure = axes.flat[0].figure if hasattr(axes, "flat") else axes.figure
  figure.set_size_inches(max(6.0, figure.get_size_inches()[0]), 4.5)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def write_plots(study: optuna.Study, directory: Path) -> dict[str, str]:
  """Writes the figures; returns, for each one not drawn, the reason."""
  from optuna.visualization import matplotlib as ovm

  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  skipped = {}
  drawers = {
    "optimization_history.png": ovm.plot_optimization_history,
    "param_importances.png": ovm.plot_param_importances,
    "slice.png": ovm.plot_slice,
  }
  for name, draw in drawers.items():
    if name == "param_importances.png" and len(complete) < 2:
      skipped[name] = f"needs two complete trials, the study has {len(complete)}"
    elif not complete:
      skipped[name] = "no trial has completed"
    else:
      try:
        _save(draw(study), directory / name)
        continue
      except (ValueError, RuntimeError, ZeroDivisionError) as e:
        skipped[name] = f"{type(e).__name__}: {e}"
    (directory / name).unlink(missing_ok=True)
    log.info("%s not drawn: %s", name, skipped[name])
  return skipped


def write(study: optuna.Study, spec: SearchSpec, directory: Path) -> str:
  """Writes ``search.csv``, ``search.md`` and the figures; returns the Markdown."""
  table = rows(study, spec)
  markdown = to_markdown(table, spec, best_trial(study))
  skipped = write_plots(study, directory)
  drawn = [n for n in PLOTS if n not in skipped]
  if drawn:
    markdown += "\n" + "\n".join(f"![{n[:-4]}]({n})" for n in drawn) + "\n"
  if skipped:
    markdown += "\n" + "\n".join(f"Not drawn: {n} ({why})." for n, why in skipped.items()) + "\n"
  files.write_text(directory / "search.csv", to_csv(table))
  files.write_text(directory / "search.md", markdown)
  return markdown
