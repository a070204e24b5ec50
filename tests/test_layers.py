"""The package's layers, read from its imports (every import, also those under
TYPE_CHECKING or inside functions): the YAML floor (`holdgate.configfile`) below the
domain packages, `holdgate.config` composing them on top, and no package importing back
up a layer it stands under."""

import ast
from pathlib import Path

import pytest

import holdgate

PACKAGE = Path(holdgate.__file__).parent
# Library packages that stand below the config they are part of.
DOMAIN = (
    "protocol",
    "policy",
    "identity",
    "masking",
    "store",
    "feeds",
    "telemetry",
    "credentials",
)
ABOVE_DOMAIN = ("recording", "reports")


def imports_of(path: Path) -> set[str]:
    module = ".".join(("holdgate", *path.relative_to(PACKAGE).with_suffix("").parts))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, *([node.module] if node.module else [])]))
            else:
                found.add(node.module or "")
    return {name for name in found if name.startswith("holdgate")}


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        source = parts[0].removesuffix(".py") if len(parts) > 1 else "holdgate"
        targets = {name.split(".")[1] if "." in name else "holdgate" for name in imports_of(path)}
        graph.setdefault(source, set()).update(targets - {source})
    return graph


@pytest.mark.parametrize("package", DOMAIN + ABOVE_DOMAIN)
def test_library_packages_never_import_the_composed_config(package):
    offenders = sorted(
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in (PACKAGE / package).rglob("*.py")
        for name in imports_of(path)
        if name == "holdgate.config" or name.startswith("holdgate.config.")
    )
    assert offenders == []


def test_the_yaml_floor_imports_nothing_of_the_package():
    assert imports_of(PACKAGE / "configfile.py") == set()


def test_no_two_packages_import_each_other_through_any_path():
    graph = package_graph()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = list(graph.get(start, ()))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(graph.get(name, ()))
        return seen

    cycles = sorted(name for name in graph if name in reachable(name))
    assert cycles == []
