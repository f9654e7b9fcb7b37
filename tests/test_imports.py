"""The package's import structure: no circle of any length (lazy imports inside functions count: they are
edges all the same), no import that runs up a floor, and the collector stands below what reads it."""
import ast
import os

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "tracer")

# The floors, bottom up: the path the data takes. A module may import its own floor and the ones below.
# Top-level modules are floors of their own; every other name is a subpackage.
FLOORS = ["errors", "files", "records", "module_paths", "load", "static", "inputs", "lora", "collect", "rollup",
          "diagnose", "render", "export", "api", "run", "cli"]


def modules() -> dict:
    """dotted module name -> its file, every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def import_graph() -> dict:
    """module -> the package's modules it imports, anywhere in its file."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        with open(path) as f:
            tree = ast.parse(f.read())
        found = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "tracer":
                target = node.module
            else:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from .pkg import module`
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def floor_of(module: str) -> str | None:
    """The floor a module stands on: its subpackage, or its own name at the top; None for the package face."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def cycles(graph: dict) -> list:
    """Every circle found by a depth-first walk, each as the path that closes it."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_circle_of_any_length():
    assert cycles(import_graph()) == []


def test_every_module_stands_on_a_floor():
    assert {floor_of(m) for m in modules()} - {None} <= set(FLOORS)


def test_no_import_runs_up_a_floor():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if floor_of(m) and floor_of(t) and FLOORS.index(floor_of(t)) > FLOORS.index(floor_of(m))]
    assert upward == []


def test_the_collector_imports_nothing_that_reads_it():
    graph = import_graph()
    readers = {"rollup", "diagnose", "static", "export", "render", "run", "api", "cli"}
    for collector in (m for m in graph if floor_of(m) == "collect"):
        reached, todo = set(), [collector]
        while todo:
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not {floor_of(m) for m in reached} & readers, (collector, reached)


def test_the_walk_sees_relative_imports_across_subpackages():
    graph = import_graph()
    assert "tracer.collect.collected" in graph["tracer.collect.hooks"]
    assert "tracer.records.vocab" in graph["tracer.module_paths"]
    assert "tracer.api.tracer" in graph["tracer.run.strategies"]


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_is_too_long_to_read_in_one_sitting():
    assert [m for m, path in modules().items() if sum(1 for _ in open(path)) > 400] == []
