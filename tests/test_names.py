"""Every dotted name the code and the docs mention (``digits_jax.x.y``, ``experiments.z``,
``benchmarks.w``) names a module, or a module's class, function or constant, that exists.

Modules are found without running them (the entry points define absl flags when imported);
attributes are read from the module's source: its top-level definitions, imports and
assignments, and one level into a class."""

from __future__ import annotations

import ast
import functools
import os
import re
from pathlib import Path

from tests.conftest import REPO

NAME = re.compile(r"(?<![\w./-])((?:digits_jax|experiments|benchmarks)(?:\.[A-Za-z_]\w*)+)")
SUFFIXES = (".py", ".md", ".ipynb", ".cfg", ".toml", ".sbatch", ".sh")
# Not searched: environments and caches, run outputs, and results/ (dated records of what
# was run then, commands included). This file names wrong names on purpose.
SKIPPED = {".venv", ".git", "__pycache__", ".ruff_cache", ".pytest_cache", "runs", "build"}
SKIPPED_TOP = {"results", "data"}
THIS = Path(__file__).resolve()


def mentions() -> dict[str, list[str]]:
  """Dotted name -> the files (relative) that mention it."""
  found: dict[str, list[str]] = {}
  for directory, subdirs, names in os.walk(REPO):
    top = Path(directory) == REPO
    subdirs[:] = sorted(
      d
      for d in subdirs
      if d not in SKIPPED and not d.endswith(".egg-info") and not (top and d in SKIPPED_TOP)
    )
    for name in sorted(names):
      path = Path(directory) / name
      if path.resolve() == THIS or (path.suffix not in SUFFIXES and name != "Makefile"):
        continue
      for match in NAME.finditer(path.read_text(errors="replace")):
        found.setdefault(match.group(1), []).append(str(path.relative_to(REPO)))
  return found


@functools.cache
def _definitions(path: Path) -> dict[str, set[str] | None]:
  """Top-level names of a module's source; a class maps to the names in its body."""
  tree = ast.parse(path.read_text())
  names: dict[str, set[str] | None] = {}
  for node in tree.body:
    if isinstance(node, ast.ClassDef):
      body = set()
      for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
          body.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
          body.add(item.target.id)
        elif isinstance(item, ast.Assign):
          body |= {t.id for t in item.targets if isinstance(t, ast.Name)}
      names[node.name] = body
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      names[node.name] = None
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        names[(alias.asname or alias.name).split(".")[0]] = None
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      for target in targets:
        for name in ast.walk(target):
          if isinstance(name, ast.Name):
            names[name.id] = None
  return names


def _module_file(name: str) -> Path | None:
  path = REPO.joinpath(*name.split("."))
  if (path / "__init__.py").is_file():
    return path / "__init__.py"
  if path.with_suffix(".py").is_file():
    return path.with_suffix(".py")
  return None


def resolves(dotted: str) -> bool:
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    module = _module_file(".".join(parts[:i]))
    if module is None:
      continue
    rest = parts[i:]
    if not rest:
      return True
    definitions = _definitions(module)
    if rest[0] not in definitions:
      return False
    members = definitions[rest[0]]
    if len(rest) == 1 or members is None:
      # An imported or assigned name may be anything; a function's attributes are not checked.
      return True
    return rest[1] in members
  return False


def test_every_dotted_name_resolves():
  found = mentions()
  assert len(found) > 50  # the pattern finds the names
  wrong = [f"{name} (in {', '.join(sorted(set(where)))})" for name, where in found.items()]
  wrong = [w for w, name in zip(wrong, found, strict=True) if not resolves(name)]
  assert not wrong, "names that do not exist:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_name():
  assert resolves("digits_jax.robustness.attacks.pgd")
  assert resolves("digits_jax.models.ModelSpec.recipe")
  assert resolves("experiments.sweep")
  assert not resolves("digits_jax.robustness.attacks.cw")
  assert not resolves("digits_jax.train.metrics_from_logits")
  assert not resolves("experiments.nowhere")
