"""A finished run's robustness evaluation: corruptions, attacks, calibration and cost.

:func:`evaluate_run` is what ``python -m experiments.robustness --workdir=RUN`` does for each
run, and what ``--robustness`` on a run or a sweep does right after the test evaluation. It
restores the run's best-by-validation checkpoint and measures, on the run's own test split:

* **corruptions**: accuracy under each of MNIST-C's 15 corruptions
  (:mod:`digits_jax.robustness.corruptions`), generated with a fixed seed so that every
  network sees the same corrupted images, or read from the published arrays
  (``mnist_c_dir``); one corruption's float copy is held at a time;
* **attacks**: accuracy under FGSM and L-inf PGD (:mod:`digits_jax.robustness.attacks`) at
  each eps on a fixed class-stratified subset of the test set, with the checks against
  gradient masking (robust accuracy never rises with eps, PGD never weaker than FGSM,
  eps = 1 leaves 0%, the attack's loss rises over its steps);
* **calibration**: ECE, NLL and Brier score, before and after temperature scaling fitted on
  the run's validation split (:mod:`digits_jax.robustness.calibration`);
* **cost**: parameters, FLOPs per image, training throughput, latency at batch 1 and 1,024
  (:mod:`digits_jax.robustness.cost`).

The files are those of :mod:`digits_jax.robustness.store`; an interrupted evaluation,
started again with the same settings, computes only the parts it had not written.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import data, environment, files, models, runs
from digits_jax.config import ConfigError
from digits_jax.robustness import (
  attacks,
  calibration,
  corruptions,
  cost,
  dataset_attacks,
  masking,
  store,
)
from digits_jax.rundir import read_config
from digits_jax.training.step import model_variables, predict_config

log = logging.getLogger(__name__)

DEFAULT_EPS = (0.05, 0.1, 0.2, 0.3)
# The eps = 1 guard attacks this many images of the subset: at eps = 1 any image can be
# turned into any other, so a working attack leaves none correct.
EPS1_IMAGES = 200


class RobustnessError(ConfigError):
  """Settings or a run that the evaluation cannot use; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the evaluation measures and how strongly; part of every stored result."""

  corruptions: tuple[str, ...] = corruptions.NAMES
  corruption_seed: int = 0
  mnist_c_dir: str | None = None
  attacks: tuple[str, ...] = attacks.ATTACKS
  eps: tuple[float, ...] = DEFAULT_EPS
  steps: int = 40
  step_size: float | None = None
  restarts: int = 1
  targeted: bool = False
  subset: int = 1000
  attack_seed: int = 0
  batch_size: int = 500
  cost: bool = True

  def check(self) -> Settings:
    """The settings with names expanded and checked; raises :class:`RobustnessError`."""
    try:
      names = corruptions.check_names(self.corruptions)
      if self.mnist_c_dir is not None:
        corruptions.check_published(self.mnist_c_dir, names)
      unknown = [a for a in self.attacks if a not in attacks.ATTACKS]
      if unknown:
        raise attacks.AttackError(
          f"unknown attack {unknown[0]!r}; valid attacks are: {', '.join(attacks.ATTACKS)}"
        )
      eps = attacks.check_eps(self.eps) if self.attacks else tuple(self.eps)
      self.pgd().check()
    except (corruptions.CorruptionError, attacks.AttackError) as e:
      raise RobustnessError(str(e)) from None
    if self.subset < 10:
      raise RobustnessError(f"the attacked subset must hold at least 10 images, got {self.subset}")
    if self.batch_size < 1:
      raise RobustnessError(f"batch_size must be at least 1, got {self.batch_size}")
    return dataclasses.replace(self, corruptions=names, eps=tuple(sorted(set(eps))))

  def pgd(self) -> attacks.PGDSettings:
    return attacks.PGDSettings(
      steps=self.steps,
      step_size=self.step_size,
      restarts=self.restarts,
      targeted_classes=self.targeted,
    )

  def identity(self) -> dict[str, Any]:
    """The fields that make stored parts reusable (the batch size only splits the work)."""
    out = dataclasses.asdict(self)
    del out["batch_size"]
    out["corruptions"] = list(self.corruptions)
    out["attacks"] = list(self.attacks)
    out["eps"] = list(self.eps)
    if self.mnist_c_dir is not None:
      out["mnist_c_dir"] = str(Path(self.mnist_c_dir).resolve())
    return out


def _prepare_folder(run_dir: Path, settings: Settings, overwrite: bool) -> dict | None:
  """Checks the run's robustness folder against ``settings``; returns a finished summary."""
  root = store.folder(run_dir)
  saved_path = root / store.SETTINGS
  if overwrite and root.exists():
    shutil.rmtree(root)
  if saved_path.is_file():
    saved = store.settings_of(store.read_json(saved_path))
    if saved != settings.identity():
      differ = [
        f"{k}: {saved.get(k)!r} there, {v!r} here"
        for k, v in settings.identity().items()
        if saved.get(k) != v
      ]
      raise RobustnessError(
        f"{root} holds an evaluation with other settings ({'; '.join(differ)}); pass "
        "--overwrite to replace it, or the settings it was made with"
      )
    return store.summary(run_dir)
  files.write_json(saved_path, settings.identity())
  return None


# Each generated corruption of one test set, as bytes (7.8 MB per corruption of MNIST's 10,000
# images), kept for the process: a sweep, or a folder of runs, evaluates every network on the
# same corrupted images, so each is generated once. A network still gets one float copy at a
# time. Another test set (a Fashion-MNIST run) replaces them.
_GENERATED: dict[tuple[str, str, int], np.ndarray] = {}


def _digest(images: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _generated(name: str, images: np.ndarray, seed: int, digest: str) -> np.ndarray:
  """``corruptions.corrupt(name, images, seed)``, generated once per process and test set
  (``digest``: the images' SHA-256)."""
  key = (digest, name, seed)
  if key not in _GENERATED:
    if any(k[0] != digest for k in _GENERATED):
      _GENERATED.clear()
    # Exact: the corruptions return multiples of 1/255 (float32 of whole bytes over 255).
    _GENERATED[key] = np.round(corruptions.corrupt(name, images, seed) * 255).astype(np.uint8)
  return _GENERATED[key].astype(np.float32) / np.float32(255.0)


def _accuracy(path: Path) -> float:
  arrays = store.load_arrays(path)
  return float(np.mean(arrays["predictions"] == arrays["labels"]))


def _corruptions(run, datasets, settings: Settings, logits_of, progress) -> dict[str, Any]:
  accuracy, seconds = {}, {}
  digest = _digest(datasets.test.images)
  for i, name in enumerate(settings.corruptions):
    path = store.corruption_path(run.workdir, name)
    if not path.is_file():
      start = time.perf_counter()
      if settings.mnist_c_dir is not None:
        images, labels = corruptions.load_published(settings.mnist_c_dir, name)
      else:
        images = _generated(name, datasets.test.images, settings.corruption_seed, digest)
        labels = datasets.test.labels
      predicted = np.argmax(np.asarray(logits_of(images)), axis=-1)
      del images  # one corruption's float copy at a time
      store.save_predictions(path, predicted, labels)
      seconds[name] = time.perf_counter() - start
    accuracy[name] = _accuracy(path)
    progress(f"corruption {i + 1}/{len(settings.corruptions)} {name}: {accuracy[name]:.2%}")
  worst = min(accuracy, key=accuracy.get) if accuracy else None
  return {
    "accuracy": accuracy,
    "mean": float(np.mean(list(accuracy.values()))) if accuracy else None,
    "worst": worst,
    "worst_accuracy": accuracy.get(worst),
    "source": "published" if settings.mnist_c_dir else "generated",
    "seconds": seconds,
  }


def _attack_logits(model) -> Callable[[Any, jnp.ndarray], jnp.ndarray]:
  """``(variables, images) -> logits`` of ``model`` in inference mode for the attacks
  (:func:`digits_jax.models.attack_logits`), one function object per model (Flax modules
  compare by their fields): the attacks' compiled functions are cached on it, so the runs of
  one network evaluated in one process (the seeds of a sweep) compile them once. A module
  with an unhashable field (a list) gets a function of its own."""
  return dataset_attacks.cached(_cached_attack_logits, model)


@functools.lru_cache(maxsize=8)
def _cached_attack_logits(model) -> Callable[[Any, jnp.ndarray], jnp.ndarray]:
  return models.attack_logits(model.apply)


def _attacks(run, datasets, settings: Settings, progress) -> dict[str, Any]:
  variables = model_variables(run.state)
  logits_fn = _attack_logits(run.config.create_model(run.num_classes))
  subset = dataset_attacks.stratified_subset(
    datasets.test.labels, settings.subset, settings.attack_seed
  )
  images, labels = datasets.test.images[subset], datasets.test.labels[subset]
  clean = np.argmax(np.asarray(jax.jit(logits_fn)(variables, images)), axis=-1)
  accuracy: dict[str, dict[str, float]] = {}
  losses: dict[str, dict[str, list[float]]] = {}
  seconds: dict[str, dict[str, float]] = {}
  jobs = [(a, e) for a in settings.attacks for e in settings.eps]
  if "pgd" in settings.attacks:
    jobs.append(("pgd", 1.0))  # the eps = 1 guard, on the first images of the subset

  def missing(attack, eps):
    return not (
      store.attack_path(run.workdir, attack, eps).is_file()
      and store.attack_path(run.workdir, attack, eps, ".json").is_file()
    )

  def attack_and_save(attack, eps_values, n):
    # FGSM's radii share one input gradient, so they run together; PGD one radius at a time
    # (an interrupted evaluation keeps every radius already written). Each radius is credited
    # an equal share of the seconds of the call that made it.
    start = time.perf_counter()
    out = dataset_attacks.robust_predictions(
      logits_fn,
      variables,
      images[:n],
      labels[:n],
      eps_values,
      attack=attack,
      settings=settings.pgd(),
      seed=settings.attack_seed,
      batch_size=settings.batch_size,
    )
    seconds = (time.perf_counter() - start) / len(eps_values)
    for eps in eps_values:
      path = store.attack_path(run.workdir, attack, eps)
      store.save_predictions(
        path, out["predictions"][eps], labels[:n], indices=subset[:n].astype(np.int32)
      )
      files.write_json(
        store.attack_path(run.workdir, attack, eps, ".json"),
        {"losses": [float(x) for x in out["losses"][eps]], "seconds": seconds, "images": n},
      )

  fgsm_missing = [e for a, e in jobs if a == "fgsm" and missing(a, e)]
  for i, (attack, eps) in enumerate(jobs):
    path = store.attack_path(run.workdir, attack, eps)
    meta_path = store.attack_path(run.workdir, attack, eps, ".json")
    n = min(EPS1_IMAGES, len(subset)) if eps == 1.0 else len(subset)
    if attack == "fgsm" and fgsm_missing:
      attack_and_save(attack, fgsm_missing, n)
      fgsm_missing = []
    elif missing(attack, eps):
      attack_and_save(attack, [eps], n)
    meta = store.read_json(meta_path)
    accuracy.setdefault(attack, {})[f"{eps:g}"] = _accuracy(path)
    losses.setdefault(attack, {})[f"{eps:g}"] = meta["losses"]
    seconds.setdefault(attack, {})[f"{eps:g}"] = meta["seconds"]
    progress(f"attack {i + 1}/{len(jobs)} {attack} eps {eps:g}: {accuracy[attack][f'{eps:g}']:.2%}")
  clean_accuracy = float(np.mean(clean == labels))
  eps1 = accuracy.get("pgd", {}).pop("1", None)
  pgd_losses = losses.get("pgd", {})
  checks = masking.masking_checks(
    clean_accuracy,
    {float(e): a for e, a in accuracy.get("fgsm", {}).items()},
    {float(e): a for e, a in accuracy.get("pgd", {}).items()},
    {float(e): v for e, v in pgd_losses.items()},
    eps1,
    num_images=len(subset),
  )
  return {
    "images": len(subset),
    "clean_accuracy": clean_accuracy,
    "accuracy": accuracy,
    "eps1_accuracy": eps1,
    "eps1_images": min(EPS1_IMAGES, len(subset)) if eps1 is not None else 0,
    "losses": losses,
    "seconds": seconds,
    "checks": checks,
    "checks_passed": all(c["passed"] for c in checks),
    "settings": {
      "steps": settings.steps,
      "step_size": settings.step_size,
      "restarts": settings.restarts,
      "targeted": settings.targeted,
      "subset": settings.subset,
      "seed": settings.attack_seed,
    },
  }


def _calibration(datasets, test_logits: np.ndarray, logits_of) -> dict[str, Any]:
  temperature = None
  if len(datasets.validation):
    validation = np.asarray(logits_of(datasets.validation.images), np.float64)
    temperature = calibration.fit_temperature(validation, datasets.validation.labels)
  out = calibration.summary(test_logits, datasets.test.labels, temperature or 1.0)
  out["temperature"] = temperature
  out["fitted_on"] = f"validation ({len(datasets.validation)} images)" if temperature else None
  return out


def evaluate_run(
  workdir: str | os.PathLike,
  settings: Settings = Settings(),
  *,
  datasets: data.Datasets | None = None,
  manual_dir: str | None = None,
  data_dir: str | None = None,
  backend: str = "auto",
  overwrite: bool = False,
  progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
  """Evaluates one finished run's robustness; writes and returns its ``summary.json``.

  Args:
    workdir: the run's directory (with ``config.json`` and a best checkpoint).
    settings: what to measure (checked before any work).
    datasets: the run's data, already loaded (a sweep's); else loaded here.
    manual_dir, data_dir, backend: where the data comes from
      (:func:`digits_jax.data.load_datasets`).
    overwrite: delete an earlier evaluation of the run (any settings) first.
    progress: called with one line per finished part.

  Raises:
    RobustnessError: bad settings, or the run holds an evaluation with other settings.
    RunDirError, CheckpointError: not a run, or no checkpoint.
    DataError: the data cannot be loaded.
  """
  settings = settings.check()
  workdir = Path(workdir)
  recorded = read_config(workdir)
  config, saved = recorded
  runs.require_checkpoint(workdir)
  finished = _prepare_folder(workdir, settings, overwrite)
  if finished is not None:
    return finished
  say = progress or (lambda line: log.info("%s: %s", workdir.name, line))
  start = time.perf_counter()
  datasets = runs.datasets_for(
    config, datasets, manual_dir=manual_dir, data_dir=data_dir, backend=backend
  )
  run = runs.load_predictor(workdir, datasets.num_classes, recorded=recorded)

  # The passes without a gradient (test, corrupted and validation images) go through the
  # inference path (step.TrainState.infer_fn: XLA's own convolutions, models.inference_apply);
  # the attacks, which take input gradients, through the run's own kernels with the first
  # layer fused (models.attack_logits).
  def logits_of(images):
    return predict_config(run.config, run.state, jnp.asarray(images), run.config.eval_batch_size)

  # The test logits once: the clean accuracy and the calibration both read them.
  test_logits = np.asarray(logits_of(datasets.test.images), np.float64)
  clean = np.argmax(test_logits, axis=-1)
  clean_accuracy = float(np.mean(clean == datasets.test.labels))
  timings = {}
  t0 = time.perf_counter()
  corrupted = (
    _corruptions(run, datasets, settings, logits_of, say) if settings.corruptions else None
  )
  timings["corruptions"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  attacked = _attacks(run, datasets, settings, say) if settings.attacks else None
  timings["attacks"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  path = store.folder(workdir) / store.CALIBRATION
  if not path.is_file():
    files.write_json(path, _calibration(datasets, test_logits, logits_of))
  calibrated = store.read_json(path)
  timings["calibration"] = time.perf_counter() - t0
  say(f"calibration: ECE {calibrated['ece']:.2%}, after temperature {calibrated['ece_scaled']:.2%}")
  costs = None
  if settings.cost:
    path = store.folder(workdir) / store.COST
    if not path.is_file():
      results = (
        files.read_json(workdir / "results.json") if (workdir / "results.json").is_file() else {}
      )
      files.write_json(
        path,
        cost.measure(
          config.model,
          model_variables(run.state),
          results,
          saved.get("data", {}).get("train"),
          fast=config.fast_ops,
          num_classes=run.num_classes,
          activation=config.activation,
        ),
      )
    costs = store.read_json(path)
    say(f"cost: {costs['flops_per_image'] / 1e6:.2f} MFLOP per image")
  summary = {
    "run": workdir.name,
    "model": config.model,
    "seed": config.seed,
    "clean_accuracy": clean_accuracy,
    "corruptions": corrupted,
    "attacks": attacked,
    "calibration": {k: v for k, v in calibrated.items() if not k.startswith("bins")},
    "cost": costs,
    "settings": settings.identity(),
    "seconds": timings,
    "total_seconds": time.perf_counter() - start,
    "date": time.strftime("%Y-%m-%d"),
    "machine": environment.environment(),
  }
  files.write_json(store.folder(workdir) / store.SUMMARY, summary)
  return summary


def evaluate_runs(
  paths: Iterable[str | os.PathLike],
  settings: Settings = Settings(),
  *,
  load: Callable[[Any], data.Datasets],
  overwrite: bool = False,
  progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
  """:func:`evaluate_run` on each run directory of ``paths``, data loaded once per split.

  Every run is checked (config, checkpoint) and the settings once, before the first is
  evaluated. ``load(config)`` returns the datasets for a run's config.
  """
  settings = settings.check()
  paths: Sequence[Path] = [Path(p) for p in paths]
  configs = {}
  for path in paths:
    configs[path] = read_config(path)[0]
    runs.require_checkpoint(path)
  cache: dict[tuple, data.Datasets] = {}
  out = []
  for i, path in enumerate(paths):
    config = configs[path]
    key = (config.dataset, config.validation_size)
    if key not in cache:
      cache[key] = load(config)
    say = progress or (lambda line, p=path: log.info("%s: %s", p.name, line))
    say(f"[{i + 1}/{len(paths)}] evaluating")
    out.append(evaluate_run(path, settings, datasets=cache[key], overwrite=overwrite, progress=say))
  return out
