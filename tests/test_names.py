"""Every dotted name the code and the docs mention (``digits_jax.x.y``, ``experiments.z``,
``benchmarks.w``) names a module, or a module's class, function or constant, that exists.

Modules are found without running them (the entry points define absl flags when imported);
attributes are read from the module's source: its top-level definitions, imports and
assignments, and one level into a class.

Every repository path they mention (``docs/speed.md``) exists too, and every bare name in a
docstring's Sphinx role (``:func:`share```) is defined or imported by its module. And the
flags' names follow one convention: every output folder is ``--output_dir``, every flag has
one name, and no command line in the docs gives an old one."""

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


def _text_files(extra_names: tuple[str, ...]):
  """The repository's files this test reads (suffixes in SUFFIXES, or named in
  ``extra_names``), in a fixed order, outside the skipped folders and this file."""
  for directory, subdirs, names in os.walk(REPO):
    top = Path(directory) == REPO
    subdirs[:] = sorted(
      d
      for d in subdirs
      if d not in SKIPPED and not d.endswith(".egg-info") and not (top and d in SKIPPED_TOP)
    )
    for name in sorted(names):
      path = Path(directory) / name
      if path.resolve() != THIS and (path.suffix in SUFFIXES or name in extra_names):
        yield path


def mentions() -> dict[str, list[str]]:
  """Dotted name -> the files (relative) that mention it."""
  found: dict[str, list[str]] = {}
  for path in _text_files(("Makefile",)):
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


# A path into the repository (``digits_jax/sweep/grid.py``, ``docs/speed.md``) names a file
# or folder that exists; placeholders (``configs/NAME.py``), globs and files said to be in
# git history are left out.
PATH = re.compile(
  r"(?<![\w./-])((?:digits_jax|experiments|benchmarks|scripts|configs|docs|tests|notebooks"
  r"|requirements|results)/[\w./-]++)(?![{*<$\\])"
)
PLACEHOLDER = re.compile(r"(?:^|[/_-])[A-Z]{3,}(?:$|[./_-])")


def path_mentions() -> dict[str, list[str]]:
  """Repository path -> the files (relative) that mention it."""
  found: dict[str, list[str]] = {}
  for path in _text_files(("Makefile", "run")):
    for line in path.read_text(errors="replace").splitlines():
      if "git history" in line:
        continue
      for match in PATH.finditer(line):
        mentioned = match.group(1).rstrip("./-")
        if not PLACEHOLDER.search(mentioned) and not (
          (REPO / mentioned).exists() or (path.parent / mentioned).exists()
        ):
          found.setdefault(mentioned, []).append(str(path.relative_to(REPO)))
  return found


def test_every_repository_path_exists():
  missing = path_mentions()
  wrong = [f"{name} (in {', '.join(sorted(set(where)))})" for name, where in missing.items()]
  assert not wrong, "paths that do not exist:\n" + "\n".join(wrong)


def test_the_path_checker_sees_a_missing_file():
  assert PATH.findall("see `digits_jax/userstyle.py` and docs/speed.md") == [
    "digits_jax/userstyle.py",
    "docs/speed.md",
  ]
  assert not PATH.findall("configs/search_*.py, results/levers-seed{0,1}.json")
  assert PLACEHOLDER.search("configs/NAME.py") and not PLACEHOLDER.search("docs/speed.md")


# ----------------------------------------------------------------------------------------
# One command-line convention: an output folder is --output_dir, in every entry point, and
# a flag has one name (no alias kept for an old one).

ENTRY_POINT_DIRS = ("experiments", "benchmarks", "scripts")
OUTPUT_NAMES = {"out", "output", "outdir", "out_dir", "output_path", "output_folder"}
OLD_FLAG = re.compile(r"--(?:out|output|outdir|out_dir)(?![\w-])")


def flag_names(source: str) -> tuple[set[str], set[str]]:
  """The flags a module's source defines (absl ``DEFINE_*``, argparse ``add_argument``),
  and the aliases it defines (``DEFINE_alias``)."""
  names, aliases = set(), set()
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
      continue
    strings = [a.value for a in node.args if isinstance(a, ast.Constant)]
    strings = [s for s in strings if isinstance(s, str)]
    if node.func.attr == "DEFINE_alias" and strings:
      aliases.add(strings[0])
    elif node.func.attr.startswith("DEFINE_") and strings:
      names.add(strings[0])
    elif node.func.attr == "add_argument":
      names |= {s[2:].replace("-", "_") for s in strings if s.startswith("--")}
  return names, aliases


def entry_point_flags() -> dict[str, tuple[set[str], set[str]]]:
  return {
    str(path.relative_to(REPO)): flag_names(path.read_text())
    for top in ENTRY_POINT_DIRS
    for path in sorted((REPO / top).glob("*.py"))
  }


def test_every_output_folder_flag_is_output_dir():
  found = entry_point_flags()
  # The checker sees the entry points' flags, output folders included.
  assert sum("output_dir" in names for names, _ in found.values()) >= 8
  assert "workdir" in found["experiments/compare.py"][0]
  wrong = [f"{f}: --{n}" for f, (names, _) in found.items() for n in sorted(names & OUTPUT_NAMES)]
  assert not wrong, "output folders not named --output_dir:\n" + "\n".join(wrong)
  aliases = [f"{f}: --{a}" for f, (_, a) in found.items() for a in sorted(a)]
  assert not aliases, "flags with a second name:\n" + "\n".join(aliases)


def test_the_flag_checker_sees_an_old_output_flag():
  names, aliases = flag_names(
    'flags.DEFINE_string("out", None, "")\nflags.DEFINE_alias("output_dir", "workdir")\n'
    'parser.add_argument("--output", default=None)\n'
  )
  assert names == {"out", "output"} and aliases == {"output_dir"}


def test_no_command_line_in_the_docs_gives_an_old_output_flag():
  wrong = []
  for path in [REPO / "README.md", REPO / "Makefile", REPO / ".ci" / "run"] + sorted(
    [*REPO.glob("docs/*.md"), *REPO.glob("configs/*.py"), *REPO.glob("scripts/*")]
    + [p for top in ENTRY_POINT_DIRS for p in (REPO / top).glob("*.py")]
  ):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if OLD_FLAG.search(line) and not line.startswith("#SBATCH"):  # sbatch's own --output
        wrong.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
  assert not wrong, "\n".join(wrong)


# A docstring's Sphinx role with a bare name (``:func:`share```) names something its module
# defines or imports; dotted names of this project are checked above.
ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|const|exc):`~?([\w.]+)`")
# Packages: this project's (their dotted names are checked above) and others.
PACKAGES = {"digits_jax", "experiments", "benchmarks"}
PACKAGES |= {"jax", "optax", "flax", "orbax", "numpy", "optuna", "scipy", "http"}


def _known_names(tree: ast.AST) -> set[str]:
  known = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      known.add(node.name)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
      known.add(node.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
      known.add(node.attr)
    elif isinstance(node, ast.alias):
      known |= {(node.asname or node.name).split(".")[0], node.name.split(".")[-1]}
  return known


def unknown_roles(source: str) -> list[str]:
  known = _known_names(ast.parse(source))
  return [
    match.group(0)
    for match in ROLE.finditer(source)
    if match.group(1).split(".")[0] not in known | PACKAGES
  ]


def test_every_bare_name_in_a_docstring_role_is_known_to_its_module():
  wrong = [
    f"{path.relative_to(REPO)}: {role}"
    for top in ("digits_jax", *ENTRY_POINT_DIRS)
    for path in sorted((REPO / top).rglob("*.py"))
    for role in unknown_roles(path.read_text())
  ]
  assert not wrong, "\n".join(wrong)


def test_the_role_checker_sees_a_name_that_is_gone():
  source = (
    '"""Data for :func:`compile_speedrun`; :func:`run` and :mod:`jax.numpy`."""\ndef run(): ...\n'
  )
  assert unknown_roles(source) == [":func:`compile_speedrun`"]
