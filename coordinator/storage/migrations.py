"""Versioned schema migrations: numbered SQL files per engine, applied once each, in order."""

from importlib import resources


def migration_scripts(engine: str) -> list[tuple[int, str]]:
    """(version, SQL) pairs for an engine, sorted by version."""
    folder = resources.files("coordinator.storage") / "migrations" / engine
    scripts = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            scripts.append((int(item.name.split("_", 1)[0]), item.read_text()))
    return sorted(scripts)
