"""The architecture's rules (docs/architecture.md), checked on the source with `ast`:

- the arrows between packages point one way: protocol ← coordinator, node, client; those three never
  import each other, and protocol imports none of them and does no I/O beyond key files;
- no module of those packages is longer than MAX_MODULE_LINES;
- inside the coordinator a request flows handler → broker component → storage: components never import
  the web layer, storage never imports components, and handlers (coordinator/routes) never touch the
  database, the image store or SQL, and each calls one broker component.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "transport", "coordinator", "node", "client")
# What each package may import of ours besides itself: protocol nothing; transport (the I/O the parties share)
# only protocol; the three parties protocol and transport, never each other.
PARTIES_MAY_IMPORT = ("protocol", "transport")
MAY_IMPORT = {"protocol": (), "transport": ("protocol",)} | dict.fromkeys(
    ("coordinator", "node", "client"), PARTIES_MAY_IMPORT
)
# The coordinator's web layer: HTTP in and out, the app's wiring, the operator's CLI, the API documents.
WEB_LAYER = (
    "coordinator.app",
    "coordinator.cli",
    "coordinator.admin",
    "coordinator.connections",
    "coordinator.middleware",
    "coordinator.openapi",
    "coordinator.swagger2",
    "coordinator.routes",
)
# What a handler module may import from the coordinator: the other route modules, who is calling (auth),
# errors, the broker it calls, and constants of the protocol it speaks (an SSE keep-alive, the metrics key).
ROUTES_MAY_IMPORT = (
    "coordinator.routes",
    "coordinator.auth",
    "coordinator.errors",
    "coordinator.broker",
    "coordinator.stream",
    "coordinator.metrics",
    "coordinator.openapi",
    "coordinator.swagger2",
)
# What storage may import from the coordinator besides itself: the one capability table (its SQL form is the
# pop query's filters) and the statement timer of /metrics. Neither imports a component.
STORAGE_MAY_IMPORT = ("coordinator.storage", "coordinator.capabilities", "coordinator.metrics")
SHARED_WITH_STORAGE_MAY_IMPORT = ("coordinator.storage", "coordinator.errors")
# I/O protocol/ may not do (key files are transport/keyfiles.py's).
IO_MODULES = (
    "pathlib",
    "tempfile",
    "socket",
    "asyncio",
    "aiohttp",
    "httpx",
    "requests",
    "urllib.request",
    "sqlite3",
    "asyncpg",
    "subprocess",
    "shutil",
)
# Gates every request passes before its component, which handlers may call beside it: the rate limits,
# and the webhook target check (the webhook component is built on the request desk, so the desk cannot
# call it; a refused webhook must refuse the request before it is accepted).
HANDLER_GATES = {"limiter.check", "webhooks.check_target"}
HANDLER_MAX_LINES = 12
# Where a request or a command comes in: these call components and never touch storage themselves.
ENTRY_POINTS = (
    "coordinator.routes",
    "coordinator.cli",
    "coordinator.admin",
    "coordinator.middleware",
    "coordinator.connections",
)
MAX_MODULE_LINES = 400
SQL_WORDS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE TABLE")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    def imports(self) -> set[str]:
        """Every module this one imports, at the top or inside a function, `from X import y` as X.y too."""
        found: set[str] = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = self.absolute(node)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        return found

    def absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = (
            self.name.split(".")[: -node.level]
            if self.path.name != "__init__.py"
            else (self.name.split(".")[: len(self.name.split(".")) - node.level + 1])
        )
        return ".".join([*package, *([node.module] if node.module else [])])


def load_modules(root: Path = ROOT) -> list[Module]:
    modules = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules.append(Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path))))
    return modules


def within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def package_problems(modules: list[Module]) -> list[str]:
    problems = []
    for module in modules:
        own = module.name.split(".")[0]
        for imported in module.imports():
            other = imported.split(".")[0]
            if other in PACKAGES and other != own and other not in MAY_IMPORT[own]:
                problems.append(f"{module.name} imports {imported}: {own} never imports {other}")
            if own == "protocol" and within(imported, ("bench", "tests")):
                problems.append(f"{module.name} imports {imported}: protocol imports nothing of ours")
            if own == "protocol" and within(imported, IO_MODULES):
                problems.append(f"{module.name} imports {imported}: protocol does no I/O")
    return problems


def layer_problems(modules: list[Module]) -> list[str]:
    problems = []
    for module in modules:
        if not within(module.name, "coordinator") or module.name == "coordinator":
            continue
        for imported in filter(lambda name: within(name, "coordinator"), module.imports()):
            if within(module.name, STORAGE_MAY_IMPORT[1:]) and not within(imported, SHARED_WITH_STORAGE_MAY_IMPORT):
                problems.append(f"{module.name} imports {imported}: storage uses it, so it imports no component")
            if within(module.name, "coordinator.storage"):
                if not within(imported, STORAGE_MAY_IMPORT):
                    problems.append(f"{module.name} imports {imported}: storage never imports the broker")
            elif within(module.name, "coordinator.routes"):
                if not within(imported, ROUTES_MAY_IMPORT):
                    problems.append(f"{module.name} imports {imported}: handlers reach rules through the broker")
            elif not within(module.name, WEB_LAYER) and within(imported, WEB_LAYER):
                problems.append(f"{module.name} imports {imported}: broker components never import the web layer")
    return problems


def handler_names(module: Module) -> set[str]:
    """The functions the module's ENDPOINTS table names."""
    names = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Endpoint" and len(node.args) >= 3:
            if isinstance(node.args[2], ast.Name):
                names.add(node.args[2].id)
    return names


def broker_components(function: ast.AST) -> set[str]:
    """The broker components a function uses (`broker(request).X`), less the gates (`broker(request).X.y`
    for X.y in HANDLER_GATES)."""
    gates = {
        node.value
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and f"{node.value.attr}.{node.attr}" in HANDLER_GATES
    }
    return {
        node.attr
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", None) == "broker"
        and node not in gates
    }


def name_of(node: ast.expr) -> str | None:
    """`services` for `services` and for `x.services`."""
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def storage_problems(module: Module) -> list[str]:
    problems = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and (
            node.attr in ("transaction", "reader")
            or (node.attr in ("database", "images") and name_of(node.value) == "services")
        ):
            problems.append(f"{module.name}:{node.lineno} uses .{node.attr}: storage is the broker's")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and any(
                word in node.value
                for word in SQL_WORDS  # our SQL is written in capitals
            )
        ):
            problems.append(f"{module.name}:{node.lineno} holds SQL")
    return problems


def handler_problems(modules: list[Module]) -> list[str]:
    problems = []
    for module in modules:
        if within(module.name, ENTRY_POINTS):
            problems += storage_problems(module)
        if not within(module.name, "coordinator.routes"):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and name_of(node.value) == "services" and node.attr != "config":
                problems.append(f"{module.name}:{node.lineno} uses services.{node.attr}: call a broker component")
        handlers = handler_names(module)
        for function in ast.walk(module.tree):
            if not isinstance(function, ast.AsyncFunctionDef) or function.name not in handlers:
                continue
            components = broker_components(function) - {"services"}
            if len(components) > 1:
                problems.append(f"{module.name}.{function.name} calls {sorted(components)}: one component each")
            body = function.body[1:] if ast.get_docstring(function) else function.body
            lines = (body[-1].end_lineno or 0) - body[0].lineno + 1
            if lines > HANDLER_MAX_LINES:
                problems.append(f"{module.name}.{function.name} is {lines} lines: parse, call, reply")
    return problems


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return load_modules()


def test_packages_point_one_way(modules: list[Module]) -> None:
    assert {module.name.split(".")[0] for module in modules} == set(PACKAGES)
    assert package_problems(modules) == []


def test_coordinator_layers(modules: list[Module]) -> None:
    assert layer_problems(modules) == []


def test_handlers_parse_call_one_component_and_reply(modules: list[Module]) -> None:
    routes = [module for module in modules if within(module.name, "coordinator.routes")]
    assert sum(len(handler_names(module)) for module in routes) >= 30  # the check sees the handlers
    assert handler_problems(modules) == []


def test_modules_stay_small(modules: list[Module]) -> None:
    lengths = {
        module.path.relative_to(ROOT).as_posix(): module.path.read_text(encoding="utf-8").count("\n")
        for module in modules
    }
    assert {path for path, lines in lengths.items() if lines > MAX_MODULE_LINES} == set()
