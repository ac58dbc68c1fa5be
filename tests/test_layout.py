"""The package's shape: no import cycles (function-level imports included: they hide cycles,
they do not remove them), no private name used across modules, every module importable by its
dotted path, no module named like a function it would shadow, no module over 500 lines. Read
from the source with ast where it can, so the test sees every import whether or not it runs."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "effscale"


def _modules() -> dict[str, Path]:
    """Dotted module name (effscale.x.y) -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["effscale", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """(target module, imported names or None, node) for every effscale import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "effscale":
                    yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "effscale":
                continue
            for alias in node.names:  # `from pkg import module` imports that module
                sub = f"{source}.{alias.name}"
                yield (sub, None, node) if sub in MODULES else (source, alias.name, node)


def _graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in _imports(name, path):
            if target != name and target in MODULES:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_names_across_modules():
    found = []
    for name, path in MODULES.items():
        modules = {}  # local alias -> effscale module, for attribute access like stats._p
        for target, imported, node in _imports(name, path):
            if target == name:
                continue
            if imported and imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{name}:{node.lineno} imports {target}.{imported}")
            if imported is None:
                for alias in node.names:
                    modules[alias.asname or alias.name.split(".")[-1]] = target
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{name}:{node.lineno} uses {modules[node.value.id]}.{node.attr}")
    assert found == []


def test_layout_follows_the_data_flow():
    """The subpackages the README and docs/ARCHITECTURE.md describe, and nothing else loose at
    the top level but the package's entry points."""
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or
           (p.is_dir() and (p / "__init__.py").is_file())}
    assert top == {"__init__.py", "__main__.py", "model", "data", "training", "io",
                   "experiments", "reporting", "explain", "cli"}


# Lowest first: a subpackage imports only from its own layer or lower ones.
LAYERS = ("model", "data", "io", "training", "experiments", "explain", "reporting", "cli")
# The one call against the flow: a study writes its own tables and report once it has trained.
UPWARD = {("experiments", "reporting")}


def test_imports_follow_the_layers():
    found = []
    for a, targets in _graph().items():
        for b in targets:
            la, lb = a.split(".")[1:2], b.split(".")[1:2]
            if not la or not lb or la[0] not in LAYERS or lb[0] not in LAYERS:
                continue  # the package itself and its entry points
            if LAYERS.index(lb[0]) > LAYERS.index(la[0]) and (la[0], lb[0]) not in UPWARD:
                found.append(f"{a} -> {b}")
    assert found == []


def test_no_function_over_60_lines():
    """Long functions hide their steps: split them into named ones."""
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_every_module_imports_by_its_dotted_name():
    """`import effscale.training.engine as e` gives that module, for every module (the Ray
    and Grad-CAM ones need their extras, so they are imported only when those are present)."""
    optional = {"ray", "pytorch_grad_cam", "onnx", "onnxscript"}
    failed = []
    for name in sorted(set(MODULES) - {"effscale.__main__"}):  # runs the CLI
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in optional:
                continue
            failed.append(f"{name}: {exc}")
            continue
        if module.__name__ != name or Path(module.__file__) != MODULES[name]:
            failed.append(f"{name} gives {module.__name__}")
    assert failed == []


def _shadowing(modules, exported: set[str]) -> list[str]:
    """Modules whose last name is a public function of their parent package (importing the
    module would replace that function by the module)."""
    return sorted(name for name in modules
                  if name.count(".") >= 1 and name.rpartition(".")[2] in exported.get(
                      name.rpartition(".")[0], ()))


def _exported(package: str) -> set[str]:
    """Names a package takes from its modules (`from .x import name`) or exports lazily
    (`_EXPORTS`); `from . import module` names the module itself and is left out."""
    names = set()
    for node in ast.walk(ast.parse(MODULES[package].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS"
                                                   for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    return names


def test_no_module_shares_a_name_with_a_public_function():
    """`effscale.train` is the function and `effscale.training` the package (and so on down):
    no module-class trick is needed to keep the function when the package is imported."""
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    exported = {package: _exported(package) for package in packages}
    assert _shadowing(MODULES, exported) == []
    import effscale
    import effscale.reporting.pages  # noqa: F401 - importing subpackages changes nothing
    import effscale.training.engine  # noqa: F401
    assert callable(effscale.train) and callable(effscale.report)
    assert type(effscale) is type(importlib)  # a plain module


def test_the_shadowing_check_can_fail():
    exported = {"effscale": {"train", "study"}, "effscale.training": {"evaluate"}}
    modules = ["effscale.train.engine", "effscale.train", "effscale.training.evaluate",
               "effscale.training.evaluation"]
    assert _shadowing(modules, exported) == ["effscale.train", "effscale.training.evaluate"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    """Over 500 lines a module holds more than one thing: split it along its seams."""
    assert len(MODULES[name].read_text().splitlines()) <= 500


def _tricks(source: str) -> list[str]:
    """Module-class and sys.modules tricks in a module's source: assigning a module's
    __class__, or writing into sys.modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            text = ast.unparse(target)
            if text.endswith("__class__") or text.startswith("sys.modules"):
                found.append(f"line {node.lineno}: {text} = ...")
    return found


def test_no_module_class_or_sys_modules_tricks():
    found = [f"{name} {trick}" for name, path in MODULES.items()
             for trick in _tricks(path.read_text())]
    assert found == []


def test_the_trick_check_can_fail():
    old = "import sys, types\nsys.modules[__name__].__class__ = types.ModuleType\n" \
          "sys.modules['x'] = None\n"
    assert len(_tricks(old)) == 2
