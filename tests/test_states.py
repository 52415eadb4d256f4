"""A request's and a job's states are Literal types (coordinator/storage/records.py): mypy refuses an
unknown state assigned or compared with `==`, but not one among others in a tuple (`in ("waiting",
"typo")`) or written in SQL. This test reads the coordinator's code for every state it compares or queries."""

import ast
import re
from pathlib import Path
from typing import get_args

from coordinator.storage.records import CheckWaiting, HoldState, JobState, RequestState
from protocol.samplers import GenerationState

ROOT = Path(__file__).resolve().parents[1]
STATES = set(get_args(JobState)) | set(get_args(RequestState)) | set(get_args(HoldState)) | set(get_args(CheckWaiting))
# `state` also names a submitted result's state (`body.state`, protocol's GenerationState).
KNOWN = STATES | set(get_args(GenerationState))
SQL_STATE = re.compile(r"\bstate\s*(?:=|!=|<>|IN)\s*\(?((?:'[a-z_]+'(?:,\s*)?)+)\)?", re.IGNORECASE)


def compared_states(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants compared with an attribute named `state` (==, !=, in, not in)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if not any(isinstance(side, ast.Attribute) and side.attr == "state" for side in sides):
            continue
        for side in sides:
            values = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            found += [
                (node.lineno, value.value)
                for value in values
                if isinstance(value, ast.Constant) and isinstance(value.value, str)
            ]
    return found


def test_every_state_the_coordinator_compares_or_queries_is_a_declared_one() -> None:
    problems, compared = [], 0
    for path in sorted((ROOT / "coordinator").rglob("*.py")):
        text = path.read_text()
        for line, state in compared_states(ast.parse(text)):
            compared += 1
            if state not in KNOWN:
                problems.append(f"{path.relative_to(ROOT)}:{line}: compares state with {state!r}")
        for match in SQL_STATE.finditer(text):
            for state in re.findall(r"'([a-z_]+)'", match.group(1)):
                compared += 1
                if state not in STATES:
                    problems.append(f"{path.relative_to(ROOT)}: SQL names state {state!r}")
    assert compared >= 20  # the reading still finds the comparisons (about 40 today)
    assert not problems, problems
