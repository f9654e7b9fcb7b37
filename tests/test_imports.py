"""The package's import structure: no circle of any length (lazy imports inside functions count: they are
edges all the same), and the collector stands below what reads it."""
import ast
import os

from helpers import ROOT

PACKAGE = os.path.join(ROOT, "tracer")


def import_graph() -> dict:
    """module -> the package's modules it imports, anywhere in its file."""
    modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"}
    graph = {}
    for name in modules:
        with open(os.path.join(PACKAGE, f"{name}.py")) as f:
            tree = ast.parse(f.read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tracer."):
                found.add(node.module.split(".")[1])
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


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


def test_the_collector_imports_nothing_that_reads_it():
    graph = import_graph()
    readers = {"rollup", "diagnosis", "discovery", "exporters", "run_notes", "verdict", "pipeline", "strategies"}
    for collector in ("hooks", "collected", "pass_facts", "steps"):
        reached, todo = set(), [collector]
        while todo:
            for nxt in graph[todo.pop()] - reached:
                reached.add(nxt)
                todo.append(nxt)
        assert not reached & readers, (collector, reached & readers)


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
