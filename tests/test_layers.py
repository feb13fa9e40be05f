"""The package's imports run one way only: data → models → editors → metrics → evaluation → command lines.

Every module of ``lightning_edit`` is read (not imported) and each ``import`` of another part of the package is
checked against the layer order below; the import graph must also have no cycles (function-level imports
included: they are only a way of hiding a cycle from Python). ``importlib.import_module("lightning_edit...")`` and
``__import__("lightning_edit...")`` with a constant name count as imports too."""
from __future__ import annotations

import ast
from pathlib import Path

import lightning_edit

PACKAGE = Path(lightning_edit.__file__).parent

# Lower number = lower layer. A module may import its own layer or any lower one, never a higher one.
LAYERS: dict[str, int] = {
    "errors": 0, "hashing": 0, "manifest": 0, "paths": 0,
    "requests": 1, "hooks": 1,
    "data": 2,
    "models": 3,
    "checkpoints": 4, "stats": 4,
    "editors": 5,
    "metrics": 6,
    "training": 7, "evaluation": 7,
    "api": 8, "easyedit": 8, "options": 8, "preflight": 6, "runner": 7, "study_runner": 8, "study_ray": 8, "ask": 9, "causal_trace": 9, "multihop_cli": 9, "capability_cli": 9, "cli": 9, "__init__": 10, "config": 0, "version": 0, "atomic": 0, "tensor_limits": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Fully qualified ``lightning_edit`` modules imported by ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # imports under "if TYPE_CHECKING:" are type hints only: never run, so neither a dependency nor a cycle
    hints_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
                  for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in hints_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lightning_edit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("lightning_edit"):
                target = node.module
            else:
                continue
            if node.module:
                found.add(target)
            else:  # "from .. import x": x is a module of that package (or a name, resolved to the package below)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found | _dynamic_imports(tree, hints_only)


def _dynamic_imports(tree: ast.AST, skip: frozenset = frozenset()) -> set[str]:
    """``importlib.import_module("lightning_edit.x")`` / ``import_module(...)`` / ``__import__(...)`` calls whose name
    is a constant inside the package: an import the statement scan above would not see."""
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        arg = node.args[0]
        if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                and arg.value.startswith("lightning_edit"):
            found.add(arg.value)
    return found


def test_the_scan_sees_imports_by_name_at_run_time():
    tree = ast.parse('import importlib\nfrom importlib import import_module\n'
                     'def f():\n    importlib.import_module("lightning_edit.editors")\n'
                     '    import_module("lightning_edit.evaluation.protocols")\n    __import__("lightning_edit.cli")\n'
                     '    importlib.import_module("json")\n')
    assert _dynamic_imports(tree) == {"lightning_edit.editors", "lightning_edit.evaluation.protocols", "lightning_edit.cli"}


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: the top-level part {top!r} has no layer in tests/test_layers.py; add it"
    return top, LAYERS[top]


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # "lightning_edit.editors.base" or a name inside a module: keep the longest known module prefix
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_runs_back_up_a_layer():
    upward = []
    for module, targets in _graph().items():
        top, level = _layer(module)
        for target in targets:
            target_top, target_level = _layer(target)
            if target_top != top and target_level > level:
                upward.append(f"{module} imports {target} ({top} {level} < {target_top} {target_level})")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles_between_modules():
    graph = _graph()
    # package __init__ files re-export their children; an __init__ importing its own children is not a cycle
    edges = {m: {t for t in ts if not (m == t.rsplit(".", 1)[0] or t == m.rsplit(".", 1)[0])} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layer_table_names_every_part_of_the_package():
    tops = {_layer(_module_name(p))[0] for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYERS)
