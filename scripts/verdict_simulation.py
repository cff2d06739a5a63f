"""How often each pairwise test says "better": a simulation from real run outputs.

    python scripts/verdict_simulation.py --workdir=results/sweep_source-2026-11-23 \
        --output_dir=results/verdict_simulation-2026-12-03

For each recipe of the committed sweep, a network is simulated from its real test outputs:
image ``i`` is misclassified with probability ``q_i`` (the share of the recipe's seeds that
got it wrong, shrunk towards the share of all runs), scaled by ``exp(u)`` with a network
effect ``u ~ N(0, tau^2)`` fitted so that the simulated seed-to-seed standard deviation of
accuracy matches the recipe's measured one. Hard images stay hard for every network, as in
the real runs, and networks of one recipe differ by as much as the real seeds did.

* Same recipe on both sides (null): three networks against three others, many times; the
  rate of "better" verdicts at the 5% level (uncorrected: Holm over many pairs only lowers
  it).
* A real difference: B's error rate raised so that its mean accuracy is 0.2 pp lower; the
  rate at which each test finds A better, at the 5% level and at 0.05/36 (the threshold of
  Holm's first step with 36 pairs, a bound on the rate after Holm).

Tests: the verdict (stratified McNemar over seed pairs with the upper bound of the seed
dispersion), the same without the dispersion and with its plain (Pearson) estimate, the
exact McNemar of the seed ensembles, and the paired t over seeds.
Reads the finished runs under each ``--workdir`` (repeatable, as in ``experiments.compare``);
writes ``simulation.json``, ``simulation.md`` and ``rates.png`` into ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from digits_jax import files, rundir
from digits_jax.analysis import figures, stats

ALPHA = 0.05
PAIRS = 36
SEEDS = 3
SHIFT = 0.002  # 0.2 pp
WORKDIR = "results/sweep_source-2026-11-23"


def recipes(workdirs: list[Path]) -> dict[str, np.ndarray]:
  """Recipe name -> ``(seeds, N)`` bool array of wrong test images, from the stored outputs
  of the finished runs under ``workdirs``."""
  groups: dict[tuple, list] = {}
  for path in rundir.find_runs(workdirs):
    run = rundir.read_run(path)
    groups.setdefault(run.key, []).append(run)
  out = {}
  for runs in groups.values():
    name = f"{runs[0].config['model']} {runs[0].config['optimizer']}"
    out[name] = np.array([~r.outputs.correct for r in sorted(runs, key=lambda r: str(r.seed))])
  return out


def fit(wrong: np.ndarray, pooled: np.ndarray, strength: float = 1.0) -> tuple[np.ndarray, float]:
  """Per-image error probabilities and the network effect's scale ``tau`` of one recipe."""
  k, n = wrong.shape
  q = (wrong.sum(0) + strength * pooled) / (k + strength)
  q *= wrong.mean() / q.mean()  # keep the recipe's mean error rate
  binomial_var = np.sum(q * (1 - q)) / n**2
  seed_var = float(np.var(wrong.mean(1), ddof=1))
  excess = max(seed_var - binomial_var, 0.0)
  tau = float(np.sqrt(excess) / q.mean())  # relative spread of a network's error rate
  return q, tau


def networks(q: np.ndarray, tau: float, count: int, rng: np.random.Generator) -> np.ndarray:
  """``(count, N)`` correctness of simulated networks."""
  scale = np.exp(rng.normal(0.0, tau, size=(count, 1)) - tau**2 / 2)
  return rng.random((count, q.size)) >= np.clip(q * scale, 0, 1)


def tests(a: np.ndarray, b: np.ndarray, ens_a: np.ndarray, ens_b: np.ndarray) -> dict:
  """Signed p-values (positive: A ahead) of each test for one simulated pair."""
  n = a.shape[1]
  tables = [stats.mcnemar_table(x, y) for x, y in zip(a, b, strict=True)]
  verdict = stats.stratified_mcnemar(tables, n)
  b_sum = sum(int(t[0][1]) for t in tables)
  c_sum = sum(int(t[1][0]) for t in tables)
  plain = scipy_stats.binomtest(b_sum, b_sum + c_sum).pvalue if b_sum + c_sum else 1.0
  d = np.array([t[0][1] - t[1][0] for t in tables], float)
  m = np.array([t[0][1] + t[1][0] for t in tables], float)
  keep = m > 0
  pearson = 1.0
  if keep.sum() >= 2:
    d, m = d[keep], m[keep]
    pearson = max(1.0, float(np.sum((d - d.sum() / m.sum() * m) ** 2 / m) / (len(d) - 1)))
  z = (b_sum - c_sum) / np.sqrt(pearson * max(b_sum + c_sum, 1))
  table = stats.mcnemar_table(ens_a, ens_b)
  diff = a.sum(1).astype(float) - b.sum(1)
  t_p = 1.0 if np.all(diff == diff[0]) else scipy_stats.ttest_1samp(diff, 0.0).pvalue
  sign = np.sign(diff.sum())
  ens_sign = np.sign(table[0][1] - table[1][0])
  return {
    "verdict (stratified McNemar, dispersion)": sign * verdict.pvalue,
    "stratified McNemar, no dispersion": sign * plain,
    "stratified McNemar, plain dispersion estimate": sign * 2 * scipy_stats.norm.sf(abs(z)),
    "seed ensembles, exact McNemar": ens_sign * stats.mcnemar_pvalue(table),
    "paired t over seeds": sign * t_p,
  }


def simulate(q_a, tau_a, q_b, tau_b, reps: int, rng) -> dict[str, np.ndarray]:
  out: dict[str, list] = {}
  for _ in range(reps):
    a, b = networks(q_a, tau_a, SEEDS, rng), networks(q_b, tau_b, SEEDS, rng)
    # The model draws correctness, not probabilities: the majority of the seeds stands in
    # for the seed ensemble (the mean of their probabilities).
    ens_a, ens_b = a.sum(0) * 2 > SEEDS, b.sum(0) * 2 > SEEDS
    for name, p in tests(a, b, ens_a, ens_b).items():
      out.setdefault(name, []).append(p)
  return {k: np.array(v) for k, v in out.items()}


def rate(signed: np.ndarray, level: float) -> float:
  return float(np.mean((signed > 0) & (np.abs(signed) < level)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--workdir",
    action="append",
    help=f"a folder of finished runs, searched recursively; repeatable (default: {WORKDIR})",
  )
  parser.add_argument("--output_dir", default="results/verdict_simulation-2026-12-03")
  parser.add_argument("--reps", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  rng = np.random.default_rng(args.seed)
  workdirs = args.workdir or [WORKDIR]
  data = recipes([Path(w) for w in workdirs])
  if not data:
    sys.exit(f"error: no runs with stored test outputs under {', '.join(workdirs)}")
  pooled = np.mean([w.mean(0) for w in data.values()], axis=0)
  results = []
  for name, wrong in sorted(data.items()):
    if wrong.shape[0] < 2:
      continue
    q, tau = fit(wrong, pooled)
    err = float(wrong.mean())
    q_worse = np.clip(q * (err + SHIFT) / err, 0, 1)
    null = simulate(q, tau, q, tau, args.reps, rng)
    alt = simulate(q, tau, q_worse, tau, args.reps, rng)
    row = {
      "recipe": name,
      "test_error": err,
      "seed_std": float(np.std(wrong.mean(1), ddof=1)),
      "tau": tau,
      "null_better": {k: rate(v, ALPHA) + rate(-v, ALPHA) for k, v in null.items()},
      "detect_0.2pp": {k: rate(v, ALPHA) for k, v in alt.items()},
      "detect_0.2pp_holm36": {k: rate(v, ALPHA / PAIRS) for k, v in alt.items()},
    }
    results.append(row)
    print(json.dumps(row), flush=True)
  out = Path(args.output_dir)
  files.write_json(out / "simulation.json", {"reps": args.reps, "seeds": SEEDS, "recipes": results})
  names = list(results[0]["null_better"])
  lines = [
    f"Simulated from {', '.join(workdirs)}, {args.reps} repetitions per recipe, "
    f"{SEEDS} seeds a side.",
    "",
    "| recipe | test error | seed std | test | 'better' with the same recipe (5%) "
    "| finds 0.2 pp (5%) | finds 0.2 pp (0.05/36) |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in results:
    for k in names:
      lines.append(
        f"| {r['recipe']} | {100 * r['test_error']:.2f}% | {100 * r['seed_std']:.3f} pp | {k} | "
        f"{100 * r['null_better'][k]:.1f}% | {100 * r['detect_0.2pp'][k]:.1f}% | "
        f"{100 * r['detect_0.2pp_holm36'][k]:.1f}% |"
      )
  files.write_text(out / "simulation.md", "\n".join(lines) + "\n")
  fig = figures.new_figure(1300, 520)
  axes = fig.subplots(1, 2)
  x = np.arange(len(results))
  width = 0.8 / len(names)
  for i, k in enumerate(names):
    axes[0].bar(x + i * width, [100 * r["null_better"][k] for r in results], width, label=k)
    axes[1].bar(x + i * width, [100 * r["detect_0.2pp"][k] for r in results], width, label=k)
  axes[0].axhline(100 * ALPHA, color="black", linestyle="--", linewidth=1)
  axes[0].set_title("Same recipe on both sides: 'better' verdicts (%)")
  axes[1].set_title("A 0.2 pp better, 3 seeds: found at the 5% level (%)")
  for ax in axes:
    ax.set_xticks(x + 0.4 - width / 2, [r["recipe"] for r in results], rotation=35, ha="right")
    ax.grid(alpha=0.3, axis="y")
  axes[0].legend(fontsize=8)
  figures.save(fig, out / "rates.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
