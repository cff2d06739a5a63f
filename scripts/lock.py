"""Regenerates the pinned locks in requirements/ from their .in files (``make lock``).

    python scripts/lock.py [--pip-arg=--isolated --pip-arg=--index-url=https://pypi.org/simple]

Resolves each layer with ``pip install --dry-run --ignore-installed --report`` (nothing is
installed) for the Python running this script, on this platform:

* ``runtime.txt``: ``runtime.in`` and everything it pulls in.
* every other layer (``tfds``, ``test``, ``bench``, ``search``, ``cuda``, ``tpu``): its ``.in``
  resolved together with ``runtime.txt``; its lock lists only what the runtime does not, and starts
  with ``-c runtime.txt`` so that what the two share keeps the runtime's versions. The
  versions of tfds, test and bench come from one resolution of the three together, so they
  agree with each other (make test installs them into one environment).

Local version labels (``+cpu``) are dropped, so every pin resolves on the public index, and
the CUDA libraries the PyPI PyTorch wheel pulls in (``nvidia-*``, ``triton``) are left out of
the bench lock (not the cuda lock): torch pins them exactly itself, and the CPU-only wheel
from PyTorch's index has none.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDER = ROOT / "requirements"
LAYERS = ("tfds", "test", "bench", "search", "cuda", "tpu")
TOGETHER = ("tfds", "test", "bench")  # the layers make test installs into one environment
# Left out of the locks: torch's CUDA build pins these exactly itself.
OMIT = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def _canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirement_files: list[pathlib.Path], pip_args: list[str]) -> dict[str, dict]:
  """{canonical name: pip's report entry} of everything pip would install for these files."""
  with tempfile.TemporaryDirectory() as tmp:
    report = pathlib.Path(tmp) / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run"]
    command += ["--ignore-installed", "--report", str(report), *pip_args]
    for f in requirement_files:
      command += ["-r", str(f)]
    subprocess.run(command, check=True, cwd=FOLDER)
    installs = json.loads(report.read_text())["install"]
  return {_canonical(item["metadata"]["name"]): item for item in installs}


def pin(item: dict) -> str:
  meta = item["metadata"]
  return f"{meta['name']}=={meta['version'].split('+')[0]}"


def needed(roots: list[str], resolved: dict[str, dict]) -> set[str]:
  """The packages of ``resolved`` that ``roots`` (requirement strings) pull in, transitively."""
  from pip._vendor.packaging.requirements import Requirement  # noqa: PLC0415

  seen: set[str] = set()
  todo = [(Requirement(r), ("",)) for r in roots]
  while todo:
    requirement, extras = todo.pop()
    if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
      continue
    name = _canonical(requirement.name)
    if name not in resolved:
      continue
    key = (name, tuple(sorted(requirement.extras)))
    if key in seen:
      continue
    seen.add(key)
    wanted = ("", *requirement.extras)
    for r in resolved[name]["metadata"].get("requires_dist", []):
      todo.append((Requirement(r), wanted))
  return {name for name, _ in seen}


def _roots(in_file: pathlib.Path) -> list[str]:
  lines = [line.split("#")[0].strip() for line in in_file.read_text().splitlines()]
  return [line for line in lines if line and not line.startswith("-")]


def write(layer: str, pins: list[str], constrained: bool) -> None:
  python = ".".join(map(str, sys.version_info[:2]))
  lines = [f"# Generated from {layer}.in by 'make lock' (pip's resolution on Python {python})."]
  if constrained:
    lines.append("-c runtime.txt")
  lines += sorted(pins, key=str.lower)
  (FOLDER / f"{layer}.txt").write_text("\n".join(lines) + "\n")
  print(f"requirements/{layer}.txt: {len(pins)} pins")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pip-arg", action="append", default=[], help="passed on to pip")
  parser.add_argument("layers", nargs="*", default=["runtime", *LAYERS])
  args = parser.parse_args()
  if "runtime" in args.layers:
    runtime = resolve([FOLDER / "runtime.in"], args.pip_arg)
    write("runtime", [pin(item) for item in runtime.values()], constrained=False)
  unknown = [layer for layer in args.layers if layer not in ("runtime", *LAYERS)]
  if unknown:
    parser.error(f"unknown layer {unknown[0]!r}; the layers are: runtime, {', '.join(LAYERS)}")
  runtime_lock = FOLDER / "runtime.txt"
  shared = {_canonical(line.split("==")[0]) for line in _roots(runtime_lock)}
  # One resolution of the layers make test installs together gives their versions, so that
  # they agree; which packages each layer needs is read from that resolution's dependency
  # graph. (cuda and tpu are resolved on their own: torch's CUDA build and jax's pin
  # different CUDA libraries.)
  together = [layer for layer in args.layers if layer in TOGETHER]
  if together:
    joint = resolve([runtime_lock, *(FOLDER / f"{layer}.in" for layer in TOGETHER)], args.pip_arg)
  for layer in args.layers:
    if layer == "runtime":
      continue
    if layer in TOGETHER:
      resolved, names = joint, needed(_roots(FOLDER / f"{layer}.in"), joint)
    else:
      resolved = resolve([runtime_lock, FOLDER / f"{layer}.in"], args.pip_arg)
      names = set(resolved)
    omit = OMIT if layer == "bench" else None
    extra = [
      pin(resolved[name])
      for name in names
      if name not in shared and not (omit and omit.match(name))
    ]
    write(layer, extra, constrained=True)


if __name__ == "__main__":
  main()
