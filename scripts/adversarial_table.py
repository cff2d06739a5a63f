"""The adversarial study's table: per network and training, what training gave over the seeds
and what the strong evaluation found where a run has one.

    python scripts/adversarial_table.py results/adversarial-2026-12-06/runs \
        > results/adversarial-2026-12-06/table.md

Reads each run's ``results.json``, ``config.json`` and ``robustness/summary.json``. Means with
half the 95% t interval over seeds (a single value where one seed); the strong evaluation's
columns count only runs evaluated with PGD-100 (the settings are in each summary). Training
minutes are the run's median epoch times its epochs (validation after each epoch included).
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

from scipy import stats


def _mean_interval(values: list[float]) -> str:
  if not values:
    return "-"
  if len(values) == 1:
    return f"{100 * values[0]:.2f}%"
  mean = statistics.mean(values)
  half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
  return f"{100 * mean:.2f}% ± {100 * half:.2f}"


def main(root: pathlib.Path) -> None:
  groups: dict[tuple[str, str], list[tuple[dict, dict | None]]] = {}
  for run in sorted(root.iterdir()):
    if not (run / "results.json").exists():
      continue
    results = json.loads((run / "results.json").read_text())
    config = json.loads((run / "config.json").read_text())["config"]
    summary_path = run / "robustness" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    training = config.get("adversarial", "none")
    if training in ("pgd", "trades"):
      training += f"-{config['adversarial_steps']}"
    key = (config["model"], training)
    groups.setdefault(key, []).append(({**results, "epochs": config["epochs"]}, summary))
  print(
    "| network | training | seeds | clean test | PGD-20 validation, eps 0.3 | train minutes "
    "| strongly evaluated | PGD-100 x 10, eps 0.1 | eps 0.2 | eps 0.3 | mean corruption | ECE |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for (model, training), items in groups.items():
    strong = [s for _, s in items if s and s["settings"].get("steps") == 100]

    def pgd(eps: str, strong=strong) -> str:
      return _mean_interval([s["attacks"]["accuracy"]["pgd"][eps] for s in strong])

    cells = [
      model,
      training,
      str(len(items)),
      _mean_interval([r["test_accuracy"] for r, _ in items]),
      _mean_interval([r["val_robust_accuracy"] for r, _ in items if "val_robust_accuracy" in r]),
      # The median epoch times the epochs: a pause or a neighbour's burst moves it least.
      f"{statistics.mean(r['seconds_per_epoch'] * r['epochs'] / 60 for r, _ in items):.1f}",
      str(len(strong)),
      pgd("0.1"),
      pgd("0.2"),
      pgd("0.3"),
      _mean_interval([s["corruptions"]["mean"] for s in strong]),
      _mean_interval([s["calibration"]["ece"] for s in strong]),
    ]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]))
