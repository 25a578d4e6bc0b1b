"""The shape of the code, kept by CI: the import graph of src/, analysis/ and hydra_plugins/
(imports inside functions counted) has no cycle and few layers; no function under src/ is
longer than a reader takes in at once; imports inside functions are few, each for a reason;
the trainer reads nothing of the launcher's environment; and every entry point's --help
answers without importing torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("src", "analysis", "hydra_plugins")
MAX_LAYERS = 8
MAX_FUNCTION_LINES = 90
MAX_FUNCTION_IMPORTS = 60
TRAINER = REPO / "src" / "trainer"


def modules() -> dict[str, Path]:
    """Module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "notebooks" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (anywhere in it), each as the module its import names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a module a.b: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def layers(edges: dict[str, set[str]]) -> dict[str, int]:
    """A module's layer: one above the highest it imports (1: imports none of the project)."""
    layer: dict[str, int] = {}
    visiting: list[str] = []

    def visit(name: str) -> int:
        if name in layer:
            return layer[name]
        if name in visiting:
            cycle = visiting[visiting.index(name) :] + [name]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        visiting.append(name)
        layer[name] = 1 + max((visit(n) for n in edges[name]), default=0)
        visiting.pop()
        return layer[name]

    for name in sorted(edges):
        visit(name)
    return layer


def functions(path: Path):
    """(qualified name, lines) of each top-level function and method (nested ones counted in it)."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        bodies = [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if isinstance(node, ast.ClassDef):
            bodies = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for fn in bodies:
            start = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
            yield f"{path.relative_to(REPO)}:{fn.name}", fn.end_lineno - start + 1


def function_imports(path: Path):
    """(line number, has a reason comment) of each import made inside a function: a comment
    on its line(s) or on the line above."""
    lines = path.read_text().splitlines()
    for fn in ast.walk(ast.parse(path.read_text())):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    text = lines[node.lineno - 2 : node.end_lineno]
                    yield node.lineno, any("#" in t for t in text)


def test_the_import_graph_has_no_cycle():
    layers(graph())  # (raises on a cycle, naming it)


def test_the_import_graph_has_few_layers():
    layer = layers(graph())
    deepest = max(layer.values())
    assert deepest <= MAX_LAYERS, sorted(layer.items(), key=lambda kv: -kv[1])[:12]


def test_the_layer_rule_finds_a_cycle():
    with pytest.raises(AssertionError, match="import cycle: a -> b -> a"):
        layers({"a": {"b"}, "b": {"a"}})


def test_no_function_under_src_is_longer_than_90_lines():
    long = [
        (f, n) for path in sorted((REPO / "src").rglob("*.py")) for f, n in functions(path) if n > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_imports_inside_functions_are_few_and_say_why():
    found = [
        (str(path.relative_to(REPO)), line, reason)
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for line, reason in function_imports(path)
    ]
    assert len(found) <= MAX_FUNCTION_IMPORTS, len(found)
    assert [f for f in found if not f[2]] == []


def _environment_reads(path: Path) -> list[str]:
    """SLURM_* / SUBMITIT_* names in the code (not in comments) and imports of submitit."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(("SLURM_", "SUBMITIT_")):
                found.append(node.value)
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "submitit"]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "submitit":
            found.append(node.module)
    return found


def test_the_trainer_reads_nothing_of_the_launchers_environment():
    assert TRAINER.is_dir()
    assert {str(p.name): _environment_reads(p) for p in TRAINER.glob("*.py") if _environment_reads(p)} == {}
    # (and the rule would see it)
    assert _environment_reads(REPO / "src" / "execute" / "environment.py")


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "src.launch", "--help"],
        ["-m", "src.launch", "status", "--help"],
        ["-m", "src.train", "--help"],
        ["-m", "analysis", "--help"],
    ],
)
def test_every_entry_points_help_answers_without_torch(command):
    code = (
        "import runpy, sys; sys.argv = [sys.argv[0], *sys.argv[2:]]\n"
        "try:\n    runpy.run_module(sys.argv.pop(0) if False else MODULE, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('torch' in sys.modules, file=sys.stderr)\n"
    ).replace("MODULE", repr(command[1]))
    out = subprocess.run(
        [sys.executable, "-c", code, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.lstrip().lower().startswith("usage"), out.stdout[:200]
    assert out.stderr.strip().splitlines()[-1] == "False", out.stderr


def test_the_help_page_lists_the_registries_names_read_without_importing_them():
    from src.config_groups import REGISTRY_GROUPS, declared_names, registry_names

    for group in REGISTRY_GROUPS:
        assert declared_names(group) == sorted(registry_names(group)), group
