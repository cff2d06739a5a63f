"""The module graph of digits_jax flows one way: data -> models -> training -> analysis ->
runs -> sweep. Read from the source (every import, also inside functions), so a lazy
import cannot hide a cycle."""

from __future__ import annotations

import ast
import pathlib

from tests.conftest import REPO

PACKAGE = REPO / "digits_jax"

# Each module's layer; an import may only go to the same layer or a lower one.
LAYERS = {
  "digits_jax.files": 0,
  "digits_jax.progress": 0,
  "digits_jax.environment": 0,
  "digits_jax.data": 0,
  "digits_jax.augment": 0,
  "digits_jax.app.preprocess": 0,
  "digits_jax.models": 1,
  "digits_jax.config": 2,
  "digits_jax.rundir": 2,
  "digits_jax.analysis.stats": 0,
  "digits_jax.training": 3,
  "digits_jax.analysis": 4,
  "digits_jax.runs": 5,
  "digits_jax.app.predict": 6,
  "digits_jax.app": 6,
  "digits_jax.sweep": 7,
  "digits_jax.speedrun": 4,
  "digits_jax.search": 8,
  "digits_jax.robustness": 0,
  "digits_jax.robustness.store": 2,
  "digits_jax.robustness.cost": 3,
  "digits_jax.robustness_eval": 6,
}


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts = parts[:-1]
    out[".".join(parts)] = path
  return out


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
  """The digits_jax modules ``path`` imports, each the most specific module named."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
      names = [n for n in names[:-1] if n in modules] or [node.module]
    for name in names:
      while name and name not in modules:
        name = name.rpartition(".")[0]
      if name.startswith("digits_jax"):
        found.add(name)
  return found


def _layer(module: str) -> int:
  for prefix in sorted(LAYERS, key=len, reverse=True):
    if module == prefix or module.startswith(prefix + "."):
      return LAYERS[prefix]
  raise AssertionError(f"{module} has no layer in tests/test_structure.py: add it to LAYERS")


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_imports_go_down_the_layers():
  wrong = [
    f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
    for a, targets in _graph().items()
    for b in targets
    if a != "digits_jax" and _layer(b) > _layer(a)
  ]
  assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of ``graph`` as a path that returns to its start, or ``None``.

  A package's ``__init__`` importing its own submodules is how packages work, not a cycle.
  """
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt.startswith(node + "."):
        continue
      if state.get(nxt) == 1:
        return path[path.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_import_graph_has_no_cycle():
  cycle = find_cycle(_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_a_cycle():
  """find_cycle finds a cycle where there is one (so its passing above means something)."""
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"p": {"p.x"}, "p.x": {"q"}, "q": set()}) is None
