"""Issue 15: the CLI's live line counts the coordinator's ETA down between answers, and says why a
request cannot be served."""

import io

import pytest
from rich.console import Console

from client import progress
from client.progress import WaitDisplay, describe
from protocol.generation import RequestCheck


def check(**changes: object) -> RequestCheck:
    fields: dict[str, object] = {
        "finished": 0,
        "processing": 1,
        "restarted": 0,
        "waiting": 3,
        "done": False,
        "faulted": False,
        "wait_time": 150,
        "queue_position": 2,
        "kudos": 0.0,
        "is_possible": True,
    }
    return RequestCheck.model_validate({**fields, **changes})


def test_eta_counts_down_from_the_last_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=True)
    with WaitDisplay("req-1", console=console) as display:
        display.update(check())
        assert "ETA ~2 min 30 s" in display.current_line()
        now[0] += 40
        assert "ETA ~1 min 50 s" in display.current_line()  # no new answer: counted down
        now[0] += 500
        assert "ETA ~0 s" in display.current_line()  # never below zero
        display.update(check(wait_time=30))  # a new answer replaces the countdown
        assert "ETA ~30 s" in display.current_line()
        display.say("coordinator unreachable")
        assert display.current_line() == "coordinator unreachable"


def test_impossible_request_shows_the_coordinators_reason() -> None:
    line = describe(check(is_possible=False, is_possible_reason="No online node serves rare-model."))
    assert "No online node serves rare-model." in line and "ETA" not in line


def test_a_cancelled_request_reads_as_cancelled() -> None:
    line = describe(check(cancelled=True, done=True, waiting=0, processing=0, finished=1), total=2)
    assert line == "cancelled · 1/2 images done"
    assert describe(check(cancelled=True, waiting=0)).startswith("cancelled · finishing images in progress")
