"""A run from start to finish, and a finished run read back.

:func:`train_and_evaluate` is what ``python -m experiments.train`` does: check the work
directory, load the data, train (:func:`digits_jax.training.loop.train`, resuming from
the last checkpoint), then evaluate the best-by-validation checkpoint once on the test
set and write the reports. ``results.json`` comes last: it marks the run finished.

:func:`load_predictor` restores a finished run's best model from its directory alone;
:func:`rebuild` (``python -m experiments.evaluate``) uses it to write the reports again
without training.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import data, files, rundir
from digits_jax.analysis import report, visualize
from digits_jax.config import Config, ConfigError, check_sizes, resolve
from digits_jax.rundir import RunDirError, read_config
from digits_jax.training import checkpoints, distributed, loop, sharding, transfer
from digits_jax.training.history import collapse_epochs
from digits_jax.training.step import (
  TrainState,
  inference_state,
  metrics_from_logits,
  model_variables,
  predict_config,
  variables_template,
)

log = logging.getLogger(__name__)

__all__ = [
  "RunDirError",  # rundir's, raised here for a bad run folder
  "load_predictor",
  "rebuild",
  "train_and_evaluate",
]


@dataclasses.dataclass
class Predictor:
  """A run's best-by-validation model, restored from its directory, with the run's config.

  Not a second kind of run: a run's folder is read by :func:`digits_jax.rundir.read_run`
  (:class:`digits_jax.rundir.Run`, its records); this is the model it trained, as a function
  of images.

  What evaluation, prediction and the drawing page share: :func:`probabilities` is the
  model as a function of images; ``name`` is how predictions and the page label it (the
  directory's name, or its whole path where two loaded runs share a name).
  """

  workdir: Path
  config: Config
  state: TrainState
  best_epoch: int
  saved: dict[str, Any]  # the whole config.json
  num_classes: int
  name: str

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes), float64, for images (N, 28, 28, 1) or (N, 28, 28)
    in [0, 1], computed as the run's test was (test-time augmentation included when the run
    used it, :func:`digits_jax.training.step.predict_config`); a ValueError names any other
    shape."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[1:] != (data.IMAGE_SIZE, data.IMAGE_SIZE, 1):
      size = data.IMAGE_SIZE
      raise ValueError(f"expected (N, {size}, {size}, 1) images, got {images.shape}")
    if len(images) == 0:
      return np.zeros((0, self.num_classes))
    logits = predict_config(
      self.config, self.state, jnp.asarray(images), self.config.eval_batch_size
    )
    return np.asarray(jax.nn.softmax(logits, axis=-1)).astype(np.float64)


def restore_best(state: TrainState, best: checkpoints.BestCheckpoint) -> TrainState:
  """``state`` with the model variables of the best checkpoint."""
  variables = best.restore(model_variables(state))
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def test_logits(config: Config, state: TrainState, datasets: data.Datasets) -> jax.Array:
  """The logits of ``state`` on the test split."""
  return predict_config(config, state, jnp.asarray(datasets.test.images), config.eval_batch_size)


def write_pictures(
  workdir: Path,
  config: Config,
  state: TrainState,
  datasets: data.Datasets,
  probabilities: np.ndarray,
) -> list[str]:
  """What the network learned: ``plots/filters.png``, ``activations.png``, ``saliency.png``.

  Returns the paths written, relative to ``workdir``
  (:func:`digits_jax.analysis.visualize.write_visualizations`).
  """
  model = config.create_model(datasets.num_classes)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  paths = visualize.write_visualizations(
    workdir / report.PLOTS_DIR,
    model,
    variables,
    datasets.test.images,
    datasets.test.labels,
    probabilities,
    class_names=report.class_names(config.dataset, datasets.num_classes),
    title=report.run_title(config.to_dict()),
  )
  return [str(Path(p).relative_to(workdir)) for p in paths]


def write_evaluation(
  workdir: Path,
  config: Config,
  state: TrainState,
  logits: jax.Array,
  datasets: data.Datasets,
  history: list[dict[str, Any]],
  best_epoch: int,
  *,
  plots: bool = True,
) -> dict[str, Any]:
  """Writes what a run's test logits give: the stored test outputs, reports and pictures.

  ``test_outputs.npz`` (:func:`digits_jax.rundir.save_test_outputs`) keeps the
  class probabilities for comparisons between runs. ``plots=False`` writes the text reports
  only, without the figures (the report's and :func:`write_pictures`), the slowest part:
  :func:`rebuild` draws them later.

  Returns:
    ``test`` (loss and accuracy) and ``report`` (the summary of
    :func:`digits_jax.analysis.report.write_run_report`).
  """
  test = metrics_from_logits(logits, jnp.asarray(datasets.test.labels))
  probabilities = np.asarray(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))
  rundir.save_test_outputs(workdir, probabilities, datasets.test.labels, datasets.test.images)
  summary = report.write_run_report(
    workdir,
    logits,
    datasets.test.labels,
    datasets.test.images,
    history,
    best_epoch=best_epoch,
    test_metrics=test,
    plots=plots,
  )
  if plots:
    summary["files"] += write_pictures(workdir, config, state, datasets, probabilities)
  return {"test": test, "report": summary}


def finish(
  config: Config,
  workdir: Path,
  trained: loop.TrainingOutcome,
  datasets: data.Datasets,
  *,
  plots: bool = True,
  **extra: Any,
) -> dict[str, Any]:
  """Evaluates the best-by-validation checkpoint on the test set; writes results.json.

  First writes the reports, plots and TensorBoard scalars from the test logits;
  ``results.json`` comes last, as it marks the run finished. ``plots`` as in
  :func:`write_evaluation`; ``extra`` items are added to the results. With several
  processes, all of them restore and predict, and process 0 writes the files.
  """
  best_epoch = trained.best.best_epoch()
  state = restore_best(trained.state, trained.best)
  logits = test_logits(config, state, datasets)
  if distributed.is_writer():
    evaluation = write_evaluation(
      workdir,
      config,
      sharding.to_local(state),
      logits,
      datasets,
      trained.history,
      best_epoch,
      plots=plots,
    )
    test = evaluation["test"]
  else:
    test = metrics_from_logits(logits, jnp.asarray(datasets.test.labels))
  best_row = trained.history[best_epoch - 1]
  seconds = [r["epoch_seconds"] for r in trained.history]
  results = {
    "model": config.model,
    "optimizer": config.optimizer,
    "learning_rate": config.learning_rate,
    "seed": config.seed,
    "num_params": trained.num_params,
    "best_epoch": best_epoch,
    "val_accuracy": best_row.get("val_accuracy"),
    "val_loss": best_row.get("val_loss"),
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "train_seconds": sum(seconds),
    # The median leaves out the first epoch's compilation when there are 3 or more.
    "seconds_per_epoch": float(np.median(seconds)),
    **extra,
  }
  if "val_robust_accuracy" in best_row:
    results["val_robust_accuracy"] = best_row["val_robust_accuracy"]
    results["collapse_epochs"] = collapse_epochs(trained.history)
  if distributed.is_writer():
    files.write_json(workdir / "results.json", results)
  distributed.barrier("finished run")
  return results


def prepare(
  config: Config,
  workdir: Path,
  datasets: data.Datasets,
  *,
  overwrite: bool = False,
  final_fit: Mapping[str, Any] | None = None,
) -> None:
  """Makes ``workdir`` this run's, once every check has passed; writes ``config.json``
  (with ``final_fit``, a final fit's record, as its ``final_fit`` entry, and a transfer
  run's source as its ``source_run`` entry).

  With several processes, process 0 writes and the others wait for it.
  """
  split = loop.training_split(config, datasets)
  check_sizes(config, len(split.labels))
  sharding.check_batch_size(config.batch_size, jax.device_count())
  # Every check passed: only now may the previous run's files go.
  if distributed.is_writer():
    if overwrite:
      rundir.clear(workdir)
    if rundir.saved_config(workdir) is None:  # else resuming: keep the original
      extra = {} if final_fit is None else {rundir.FINAL_FIT: dict(final_fit)}
      if config.init_from:  # a transfer run: its source's folder, identity and weights' digest
        extra[rundir.SOURCE_RUN] = transfer.load(config, datasets.num_classes).record()
      rundir.write_config(workdir, config, datasets, len(split.labels), **extra)
  distributed.barrier("prepared run directory")


def datasets_for(
  config: Config,
  datasets: data.Datasets | None = None,
  *,
  manual_dir: str | None = None,
  data_dir: str | None = None,
  backend: str = "auto",
) -> data.Datasets:
  """``datasets`` if given, else ``config``'s dataset loaded with its validation split.

  Raises:
    DataError: the data cannot be loaded.
  """
  if datasets is not None:
    return datasets
  return data.load_datasets(
    config.dataset,
    manual_dir=manual_dir,
    data_dir=data_dir,
    validation_size=config.validation_size,
    backend=backend,
  )


def train_and_evaluate(
  config: Config,
  workdir: str | os.PathLike,
  *,
  datasets: data.Datasets | None = None,
  manual_dir: str | None = None,
  data_dir: str | None = None,
  backend: str = "auto",
  overwrite: bool = False,
  plots: bool = True,
  final_fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Trains ``config`` and writes everything about the run into ``workdir``.

  Started again on the same ``workdir``, a run picks up where it stopped: it returns
  the results of a finished run without training, and otherwise resumes from the
  checkpoint of the last finished epoch, ending with the same numbers as a run that
  was never interrupted. A ``workdir`` holding another config's run is refused unless
  ``overwrite`` (see :mod:`digits_jax.rundir`).

  Files written: ``config.json`` (resolved config and environment), ``metrics.jsonl``
  (one line per epoch), ``results.json`` (test metrics of the best-by-validation
  checkpoint, with timing and parameter count), ``checkpoints/`` (orbax), and the
  reports, plots and TensorBoard scalars of
  :func:`digits_jax.analysis.report.write_run_report`.

  The run uses every device of every process (:func:`digits_jax.training.loop.train`);
  with several processes, each calls this with the same arguments and process 0 writes
  the files.

  Args:
    config: what to run; ``None`` fields come from the model's source recipe.
    workdir: directory for the run's files (created).
    datasets: already loaded data (a sweep loads once); else loaded here.
    manual_dir, data_dir, backend: where the data comes from, see
      :func:`digits_jax.data.load_datasets`.
    overwrite: delete the files of a previous run in ``workdir`` (any config) and start
      from scratch.
    plots: draw the run's figures (:func:`write_evaluation`); ``python -m
      experiments.evaluate`` draws them later.
    final_fit: for a final fit, :func:`final_fit_record` of its validation run, kept in
      ``config.json`` so that comparisons group final fits by recipe.

  Returns:
    The contents of ``results.json``.

  Raises:
    ConfigError: a bad config, or ``workdir`` holds another config's run.
    DataError: the data cannot be loaded.
    CheckpointError: a checkpoint in ``workdir`` is corrupt or another run's.
    TrainingDivergedError: the loss became NaN or infinite.
  """
  config = resolve(config)
  finished = check_workdir(config, workdir, overwrite=overwrite)
  if finished is not None:
    log.info("%s: finished already, not trained again (results.json)", workdir)
    return finished
  datasets = datasets_for(
    config, datasets, manual_dir=manual_dir, data_dir=data_dir, backend=backend
  )
  return train_checked(
    config, workdir, datasets, overwrite=overwrite, plots=plots, final_fit=final_fit
  )


def check_workdir(
  config: Config, workdir: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, Any] | None:
  """The first half of :func:`train_and_evaluate`: checks that ``workdir`` may hold a run of
  the resolved ``config`` (:func:`digits_jax.rundir.check`), before any data is
  loaded; reads, never writes.

  Returns:
    The results of a finished run of ``config`` there (unless ``overwrite``), else ``None``:
    :func:`train_checked` trains it.

  A transfer run (``config.init_from``) that has not started yet has its source run checked
  here too (:func:`digits_jax.training.transfer.check`); a started one resumes from its own
  checkpoints and needs no source.

  Raises:
    RunDirError: ``workdir`` holds another config's run, or run files without a config.
    TransferError: the source run is missing, has no checkpoint or another network.
  """
  finished = rundir.check(config, workdir, overwrite=overwrite)
  if finished is None and config.init_from and (overwrite or transfer.recorded(workdir) is None):
    transfer.check(config)
  # Every process has read the directory before process 0 changes it.
  distributed.barrier("checked run directory")
  return finished


def train_checked(
  config: Config,
  workdir: str | os.PathLike,
  datasets: data.Datasets,
  *,
  overwrite: bool = False,
  plots: bool = True,
  final_fit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The second half of :func:`train_and_evaluate`: trains the resolved ``config`` in the
  ``workdir`` that :func:`check_workdir` found unfinished, and evaluates it. The arguments
  are :func:`train_and_evaluate`'s.
  """
  workdir = Path(workdir)
  prepare(config, workdir, datasets, overwrite=overwrite, final_fit=final_fit)
  trained = loop.train(config, workdir, datasets)
  return finish(config, workdir, trained, datasets, plots=plots)


FINAL_FIT_SUFFIX = "-final"


def final_fit_config(config: Config, results: dict[str, Any]) -> Config:
  """The final fit of a finished validation run of the resolved ``config``: the same recipe
  trained on the whole training split (no validation split) for the epoch count validation
  chose.

  The schedule then spans those epochs; with the one-cycle recipes the chosen epoch is
  usually the last, so the schedule is the validation run's. Its test accuracy is measured
  once, on the last epoch (nothing else may choose without a validation split).

  Raises:
    ConfigError: the run had no validation split, so nothing chose its epoch count.
  """
  if not config.validation_size or results.get("val_accuracy") is None:
    raise ConfigError(
      "a final fit needs a run with a validation split to choose its epoch count; "
      "train with --validation_size > 0 (the default, 5000)"
    )
  return config.replace(validation_size=0, epochs=int(results["best_epoch"]))


def final_fit_record(
  config: Config, results: Mapping[str, Any], workdir: str | os.PathLike
) -> dict[str, Any]:
  """What a final fit's ``config.json`` says of the validation run it repeats: its folder's
  name, the resolved ``config``'s epoch count and validation split, and the validation
  accuracy of the chosen epoch (:attr:`digits_jax.rundir.Run.key` and ``val_accuracy`` read
  them)."""
  return {
    "of": Path(workdir).name,
    "epochs": config.epochs,
    "validation_size": config.validation_size,
    "best_epoch": int(results["best_epoch"]),
    "val_accuracy": results.get("val_accuracy"),
  }


def require_checkpoint(workdir: Path) -> None:
  """Raises CheckpointError, with the fix, when ``workdir`` has no best checkpoint."""
  if not (workdir / "checkpoints" / "best").is_dir():
    raise checkpoints.CheckpointError(
      f"{workdir} has no checkpoint (checkpoints/best): the run stopped before its first "
      "epoch ended; train it again"
    )


def load_predictor(
  workdir: str | os.PathLike,
  num_classes: int | None = None,
  *,
  recorded: tuple[Config, dict[str, Any]] | None = None,
) -> Predictor:
  """Restores a run's best-by-validation model from its directory.

  Args:
    workdir: a run's work directory.
    num_classes: classes of the model's output; default: as many as the run's dataset has.
    recorded: what :func:`digits_jax.rundir.read_config` read of ``workdir`` already (its
      checkpoint checked too, :func:`require_checkpoint`), so that nothing is read or
      checked twice; default: read and checked here.

  Raises:
    RunDirError: ``workdir`` has no readable ``config.json``.
    CheckpointError: no checkpoint, or one that does not fit the config.
  """
  workdir = Path(workdir)
  if recorded is None:
    recorded = read_config(workdir)
    require_checkpoint(workdir)
  config, saved = recorded
  if num_classes is None:
    num_classes = data.NUM_CLASSES
  # Restored into the model's shapes, computed without initialising it (which costs seconds).
  model = config.create_model(num_classes)
  best = checkpoints.BestCheckpoint(workdir / "checkpoints")
  variables = best.restore(variables_template(model))
  return Predictor(
    workdir,
    config,
    inference_state(model, variables),
    best.best_epoch(),
    saved,
    num_classes=num_classes,
    name=workdir.name or str(workdir),
  )


def rebuild(
  workdir: str | os.PathLike,
  *,
  datasets: data.Datasets | None = None,
  manual_dir: str | None = None,
  data_dir: str | None = None,
  backend: str = "auto",
  plots: bool = True,
) -> dict[str, Any]:
  """Writes a run's reports and plots again from its best checkpoint, without training.

  Restores the best checkpoint (:func:`load_predictor`), predicts the test split, writes the
  files of :func:`write_evaluation`, then compares the test accuracy with the one
  ``results.json`` saved. ``plots=False``: the text reports only (a quick check that the
  checkpoint reproduces its test).

  Returns:
    ``test_accuracy`` and ``test_loss`` of the checkpoint now, ``best_epoch``,
    ``saved_test_accuracy`` (``None`` without ``results.json``) and ``reproduced``:
    whether the two accuracies are equal (``None`` without ``results.json``); plus the
    report summary under ``report``.

  Raises:
    RunDirError: ``workdir`` has no ``config.json``.
    CheckpointError: no checkpoint, or one that does not fit.
    ConfigError, DataError: a bad config or data.
  """
  workdir = Path(workdir)
  recorded = read_config(workdir)
  config, saved = recorded
  require_checkpoint(workdir)
  datasets = datasets_for(
    config, datasets, manual_dir=manual_dir, data_dir=data_dir, backend=backend
  )
  expected = saved.get("data", {}).get("test")
  if expected is not None and expected != len(datasets.test):
    raise data.DataError(
      f"the run was tested on {expected} images, the {config.dataset} test "
      f"split loaded now has {len(datasets.test)}"
    )
  run = load_predictor(workdir, datasets.num_classes, recorded=recorded)
  logits = test_logits(config, run.state, datasets)
  evaluation = write_evaluation(
    workdir,
    config,
    run.state,
    logits,
    datasets,
    files.read_jsonl(workdir / "metrics.jsonl"),
    run.best_epoch,
    plots=plots,
  )
  saved_accuracy = None
  if (workdir / "results.json").is_file():
    saved_accuracy = files.read_json(workdir / "results.json").get("test_accuracy")
  test = evaluation["test"]
  return {
    "test_accuracy": test["accuracy"],
    "test_loss": test["loss"],
    "best_epoch": run.best_epoch,
    "saved_test_accuracy": saved_accuracy,
    "reproduced": None if saved_accuracy is None else saved_accuracy == test["accuracy"],
    "report": evaluation["report"],
  }
