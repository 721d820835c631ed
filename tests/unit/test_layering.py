"""The project's layers, read from the source with `ast` (nothing is imported):

    autocode/   the runtime the hosts run: imports nothing of the deploy
    infra/      operations, facts, API clients, the settings base: never roles/, tasks/,
                settings/ or group_data/ (a role's component list is an argument)
    settings/   one typed model per component and the names several share: infra/ and
                autocode/ only
    tasks/      one module per component: never another task module, never roles/
    roles/      the component list of each role

No import circle anywhere, no first-party import inside a function (the old way of dodging a
circle), and pyinfra operations (`@operation`) are defined in infra/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("autocode", "infra", "settings", "tasks", "roles", "group_data")
SCRIPTS = ("deploy.py", "inventory.py")
FIRST_PARTY = set(PACKAGES) | {"lab", "bench", "testing", "deploy", "inventory"}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    for script in SCRIPTS:
        files[script.removesuffix(".py")] = ROOT / script
    return files


MODULES = module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str) -> str | None:
    """The first-party module an imported name lives in (a package's __init__ for names
    taken from a package), or None for third-party and the standard library."""
    if name.split(".")[0] not in FIRST_PARTY:
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, inside a function) for every import statement."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child)
                # `from package import module` names a module; `from module import name` not.
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                         for alias in child.names]
            else:
                visit(child, nested)
                continue
            for name in names:
                target = _target(name)
                if target and target != module:
                    found.append((target, child.lineno, in_function))

    visit(tree, False)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def layer(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read():
    # A guard for the guard: the reader must see the edges everyone knows are there.
    assert any(t == "infra.settings" for t, _, _ in GRAPH["settings.dns"])
    assert any(t.startswith("tasks.") for t, _, _ in GRAPH["roles.orchestrator"])
    assert len(MODULES) > 60


def test_there_is_no_import_circle():
    edges = {module: {target for target, _, _ in found} for module, found in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def strongly_connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges[module]:
            if target not in index:
                strongly_connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            strongly_connect(module)
    assert circles == []


FORBIDDEN = {
    "autocode": {"infra", "settings", "tasks", "roles", "group_data", "deploy", "inventory"},
    "infra": {"settings", "tasks", "roles", "group_data", "deploy", "inventory"},
    "settings": {"tasks", "roles", "group_data", "deploy", "inventory"},
    "tasks": {"roles", "group_data", "deploy", "inventory"},
    "roles": {"group_data", "deploy", "inventory"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_only_the_layers_beneath_it(package):
    wrong = [f"{module}:{line} imports {target}"
             for module, found in GRAPH.items() if layer(module) == package
             for target, line, _ in found if layer(target) in FORBIDDEN[package]]
    assert wrong == []


def test_no_task_module_imports_another():
    wrong = [f"{module}:{line} imports {target}"
             for module, found in GRAPH.items() if module.startswith("tasks.")
             for target, line, _ in found if target.startswith("tasks")]
    assert wrong == []


def test_no_first_party_import_inside_a_function():
    # The runtime's CLIs import their subcommands' heavy modules when that subcommand runs
    # (mitmproxy, cryptography): a start-up cost, not a circle.
    wrong = [f"{module}:{line} imports {target}"
             for module, found in GRAPH.items() if layer(module) != "autocode"
             for target, line, inside in found if inside]
    assert wrong == []


def _operations_defined(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            called = decorator.func if isinstance(decorator, ast.Call) else decorator
            name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
            if name == "operation":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    return found


def test_operations_are_defined_in_infra_only():
    everywhere = [found for path in sorted(ROOT.rglob("*.py"))
                  if not {".venv", ".serve-venv", "tests"} & set(path.relative_to(ROOT).parts)
                  for found in _operations_defined(path)]
    assert everywhere, "the scan must see infra's operations"
    outside = [found for found in everywhere if not found.startswith("infra/")]
    assert outside == []


def _is_stub(function: ast.FunctionDef) -> bool:
    body = [s for s in function.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return all(isinstance(s, ast.Pass) or isinstance(s, ast.Return) and s.value is None
               or isinstance(s, ast.Return) and isinstance(s.value, ast.Constant)
               for s in body)


def test_a_role_lists_only_components_that_serve_it():
    # One spelling for "this role has nothing of this component": it is not in the role's
    # list. No stub role functions.
    import roles.orchestrator
    import roles.worker

    for role in (roles.orchestrator, roles.worker):
        name = role.__name__.rpartition(".")[2]
        missing = [m.__name__ for m in role.COMPONENTS if not callable(getattr(m, name, None))]
        assert missing == [], f"{name} lists components without a {name}() deploy"
    stubs = [f"{path.name}:{node.lineno} {node.name}"
             for path in sorted((ROOT / "tasks").glob("*.py"))
             for node in ast.parse(path.read_text()).body
             if isinstance(node, ast.FunctionDef) and node.name in ("orchestrator", "worker")
             and _is_stub(node)]
    assert stubs == []
