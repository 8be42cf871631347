"""Every module imports on its own, and no module needs a half-run module at import time.

Import circles pass unnoticed while some other module happens to be imported first, then break
whoever imports the wrong one first. Two checks catch them: each module is imported alone, with
no PartCam module loaded before it, and a static graph of the imports that run at import time
(not those inside functions) must have no cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "server", "training")
# Modules that run a program when imported.
NOT_IMPORTABLE = {"server.__main__"}
# Known circles, each to be removed with its fix: the backbone registry imports the selfie spec,
# and the selfie module takes BackboneSpec from the registry's half-run __init__.
KNOWN_CYCLES: list[set[str]] = []

# One interpreter for all modules, to keep the test fast on a small machine: the third-party
# libraries stay loaded, and every PartCam module is dropped from sys.modules before the next
# import, so each module is imported as in a fresh interpreter as far as PartCam's code goes.
ISOLATED_IMPORTS = """
import importlib, json, sys, traceback
import numpy, torch  # noqa: F401  heavy and shared; not ours
packages, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
failures = {}
for name in names:
    for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def module_files() -> dict[str, tuple[Path, bool]]:
    """Every module of the packages: dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _run_at_import(body: list[ast.stmt]):
    """Import statements that run when the module is imported (not in functions or TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _run_at_import(node.orelse)
        else:
            yield from _run_at_import(list(ast.iter_child_nodes(node)))


def import_graph() -> dict[str, set[str]]:
    """Module -> the PartCam modules it needs at import time."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        needs: set[tuple[str, bool]] = set()  # (module, whether a name is taken from its __init__)
        for node in _run_at_import(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                needs.update((alias.name, False) for alias in node.names)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                needs.add((submodule, False) if submodule in modules else (source, True))
        # Importing a.b.c runs a and a.b first, which alone is no circle; taking a name from a
        # parent package's __init__ is a real need of its body, which may still be running.
        graph[name] = {target for target, takes_name in needs
                       if target in modules and target != name and (takes_name or not name.startswith(target + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_each_module_imports_on_its_own():
    names = sorted(set(module_files()) - NOT_IMPORTABLE)
    result = subprocess.run([sys.executable, "-c", ISOLATED_IMPORTS, json.dumps(PACKAGES), json.dumps(names)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())


def test_no_import_cycles():
    found = [cycle for cycle in cycles(import_graph()) if cycle not in KNOWN_CYCLES]
    assert not found, f"modules that need each other at import time: {[sorted(c) for c in found]}"


def test_the_cycle_check_finds_a_cycle_through_a_package_init():
    graph = {"pkg": {"pkg.a"}, "pkg.a": {"pkg"}, "pkg.b": {"pkg.a"}}
    assert cycles(graph) == [{"pkg", "pkg.a"}]


def test_the_converters_depend_on_the_backbones_not_back():
    graph = import_graph()
    assert "engines.backbones.selfie" in graph["engines.importers.selfie_tflite"]
    assert not any(name.startswith("engines.importers") for name in graph["engines.backbones.selfie"])
