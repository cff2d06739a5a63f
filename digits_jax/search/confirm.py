"""Confirmation: the best trials and the registered recipe, retrained on fresh seeds.

The best trial of many is partly luck (the winner's curse): its validation accuracy
overstates what its recipe gives. :func:`confirm` retrains the ``K`` best complete
trials by validation accuracy, and the model's registered recipe as the baseline, on
``S`` seeds the search never used, as a sweep in ``<study>/confirm/``
(:func:`digits_jax.sweep.run_sweep`: resumable, split over workers), then runs the
comparison (:mod:`digits_jax.analysis.comparison`) on them. ``confirm.md`` puts side by
side each trial's validation accuracy in the search, its validation mean over the fresh
seeds and its test accuracy with the interval, the verdict against the baseline, and how
much of the search's gain over the baseline (in validation accuracy) survived.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from digits_jax import data, files, sweep
from digits_jax.analysis import compare_report, stats
from digits_jax.analysis import comparison as comparison_lib
from digits_jax.config import RECIPE_FIELDS, Config, resolve
from digits_jax.search import study as study_lib
from digits_jax.search.space import SearchError, SearchSpec

CONFIRM_DIR = "confirm"


@dataclasses.dataclass(frozen=True)
class Candidate:
  """A recipe to confirm: a trial's (``trial`` its number) or the baseline's (``None``)."""

  name: str
  trial: int | None
  search_val: float | None
  configs: tuple[Config, ...]


def seeds(spec: SearchSpec) -> list[int]:
  return list(range(spec.confirm_first_seed, spec.confirm_first_seed + spec.confirm_seeds))


def candidates(study: optuna.Study, spec: SearchSpec, top: int) -> list[Candidate]:
  """The ``top`` best complete trials by validation accuracy, then the baseline.

  Raises:
    SearchError: the study has no complete trial.
  """
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if not complete:
    raise SearchError("no trial of the study has completed: there is nothing to confirm")
  best = sorted(complete, key=lambda t: (-t.value, t.number))[:top]
  out = []
  for t in best:
    config = study_lib.trial_config(spec, t)
    out.append(
      Candidate(
        f"trial {t.number}", t.number, t.value, tuple(config.replace(seed=s) for s in seeds(spec))
      )
    )
  # The registered recipe on the same data: only the fixed fields that are not recipe ones.
  data_fields = {k: v for k, v in spec.base if k not in RECIPE_FIELDS}
  baseline = resolve(Config(model=spec.model, **data_fields))
  out.append(Candidate("recipe", None, None, tuple(baseline.replace(seed=s) for s in seeds(spec))))
  return out


def _configuration(
  comparison: comparison_lib.Comparison, dirs: list[Path]
) -> comparison_lib.Configuration:
  wanted = {d.resolve() for d in dirs}
  for c in comparison.configurations:
    if {Path(p).resolve() for p in c.runs} == wanted:
      return c
  raise SearchError(f"the comparison has no configuration of runs {sorted(map(str, dirs))}")


def _pair(
  comparison: comparison_lib.Comparison, a: str, b: str
) -> tuple[comparison_lib.Pair, int] | None:
  for p in comparison.pairs:
    if (p.a, p.b) == (a, b):
      return p, 1
    if (p.a, p.b) == (b, a):
      return p, -1
  return None


def _pct(x: float | None) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _pp(x: float | None) -> str:
  return "-" if x is None or math.isnan(x) else f"{100 * x:+.2f} pp"


def _val_interval(values: list[float]) -> str:
  if len(values) < 2:
    return ""
  iv = stats.seed_interval(values)
  return f" [{100 * iv.low:.2f}, {100 * iv.high:.2f}]"


def confirm(
  study: optuna.Study,
  spec: SearchSpec,
  directory: Path,
  *,
  load: Callable[[Config], data.Datasets],
  num_workers: int = 1,
  worker_index: int = 0,
  plots: bool = True,
) -> dict[str, Any] | None:
  """Trains the candidates' runs (this worker's share), then compares and reports.

  ``plots=False`` (``--plots=false``): the runs write their text reports without figures.

  Returns:
    ``markdown`` and ``rows`` of ``confirm.md``, or ``None`` while runs of other workers
    have not finished.
  """
  chosen = candidates(study, spec, spec.confirm_top)
  out = directory / CONFIRM_DIR
  configs = [c for cand in chosen for c in cand.configs]
  sweep.run_sweep(
    configs, out, load=load, num_workers=num_workers, worker_index=worker_index, plots=plots
  )
  results, missing = sweep.finished_runs(out, configs)
  if missing:
    return None
  comparison = comparison_lib.compare_runs([out / r["run"] for r in results])
  compare_report.write_comparison(comparison, out)
  by_name = {}
  for cand in chosen:
    dirs = sweep.run_dirs(out, cand.configs)
    conf = _configuration(comparison, dirs)
    vals = [files.read_json(d / "results.json")["val_accuracy"] for d in dirs]
    by_name[cand.name] = (cand, conf, vals)
  base_cand, base_conf, base_vals = by_name["recipe"]
  base_val = statistics.fmean(base_vals)
  rows = []
  for cand, conf, vals in by_name.values():
    val = statistics.fmean(vals)
    row = {
      "candidate": cand.name,
      "label": conf.label,
      "search_val": cand.search_val,
      "confirmed_val_mean": val,
      "confirmed_val_interval": _val_interval(vals),
      "test_mean": conf.mean,
      "test_interval": f" [{100 * conf.interval.low:.2f}, {100 * conf.interval.high:.2f}]",
      "seeds": len(vals),
    }
    if cand.trial is not None:
      search_gain = cand.search_val - base_val
      confirmed_gain = val - base_val
      found = _pair(comparison, conf.label, base_conf.label)
      verdict, test_gain = "-", math.nan
      if found:
        pair, sign = found
        test_gain = sign * pair.difference
        verdict = {
          "A better": "better" if sign > 0 else "worse",
          "B better": "worse" if sign > 0 else "better",
        }.get(pair.verdict, "no significant difference")
        verdict += f" (McNemar p={pair.pvalue_holm:.3g}, Holm)"
      row |= {
        "search_gain": search_gain,
        "confirmed_gain": confirmed_gain,
        "survived": confirmed_gain / search_gain if search_gain > 0 else math.nan,
        "test_gain": test_gain,
        "verdict": verdict,
      }
    rows.append(row)
  markdown = _markdown(rows, spec, comparison)
  files.write_text(out / "confirm.md", markdown)
  files.write_json(out / "confirm.json", rows)
  return {"markdown": markdown, "rows": rows}


def _markdown(rows: list[dict[str, Any]], spec: SearchSpec, comparison: Any) -> str:
  lines = [
    f"# Confirmation: {spec.model}",
    "",
    f"The {spec.confirm_top} best trials by validation accuracy and the registered recipe, "
    f"each retrained on seeds {', '.join(map(str, seeds(spec)))} (not used by the search). "
    "Intervals are 95%: t over seeds. Gains are in validation accuracy against the "
    "recipe's confirmed mean; *survived* is the confirmed gain over the search's gain "
    "(1: all of it, 0 or less: none). The verdict is the comparison's (exact McNemar on "
    "the seed ensembles' test predictions, Holm-corrected); details in compare.md.",
    "",
    "| candidate | configuration | search val | confirmed val (mean [95%]) | test (mean [95%]) "
    "| search gain | confirmed gain | survived | test gain | verdict vs recipe |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    survived = r.get("survived")
    lines.append(
      f"| {r['candidate']} | {r['label']} | {_pct(r['search_val'])} "
      f"| {_pct(r['confirmed_val_mean'])}{r['confirmed_val_interval']} "
      f"| {_pct(r['test_mean'])}{r['test_interval']} | {_pp(r.get('search_gain'))} "
      f"| {_pp(r.get('confirmed_gain'))} "
      f"| {'-' if survived is None or math.isnan(survived) else f'{100 * survived:.0f}%'} "
      f"| {_pp(r.get('test_gain'))} | {r.get('verdict', 'baseline')} |"
    )
  return "\n".join(lines) + "\n"
