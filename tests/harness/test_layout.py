"""The harness's imports run one way: no module imports (even inside a function) a module that
imports it back, directly or through others.  A circle works only while the lazy import stays
lazy, and hides which module a helper belongs to."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "harness"
MODULES = sorted(p.stem for p in HARNESS.glob("*.py"))


def harness_imports(path):
    """The harness modules a file imports anywhere in it: ``from . import x``, ``from .x
    import y``, ``from harness(.x) import y``, ``import harness.x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level == 0 and node.module
                                   and node.module.split(".")[0] == "harness"):
                parts = (node.module or "").split(".")[0 if node.level else 1:]
                if parts and parts[0]:
                    found.add(parts[0])
                else:  # from . import x / from harness import x: the names are modules
                    found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("harness."))
    return found & set(MODULES)


GRAPH = {name: harness_imports(HARNESS / f"{name}.py") for name in MODULES}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        state[name] = "done"
        path.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_the_import_graph_sees_top_level_and_function_imports():
    # Without these the cycle test below could pass on a graph with no edges.
    assert "workflows" in GRAPH["examples"]          # from . import comfy_host, workflows
    assert "tiny_digits" in GRAPH["comfy_host"]      # only inside functions
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_harness_imports_run_one_way():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle in harness/: " + " -> ".join(cycle)
