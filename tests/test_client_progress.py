"""client.progress: the one-line description of a waiting request, and its plain (non-terminal) output."""

import io

from rich.console import Console

from client.progress import WaitDisplay, describe, format_seconds
from protocol.generation import RequestCheck


def check(**changes: object) -> RequestCheck:
    fields: dict[str, object] = {
        "finished": 0,
        "processing": 0,
        "restarted": 0,
        "waiting": 4,
        "done": False,
        "faulted": False,
        "wait_time": 42,
        "queue_position": 3,
        "kudos": 0.0,
        "is_possible": True,
    }
    return RequestCheck.model_validate({**fields, **changes})


def test_queued_shows_position_eta_and_count() -> None:
    assert describe(check()) == "queue position 3 · ETA ~42 s · 0/4 images done"


def test_generating_shows_progress_and_restarts() -> None:
    line = describe(check(finished=1, processing=2, waiting=1, queue_position=0, restarted=1))
    assert line == "generating · ETA ~42 s · 1/4 images done · 2 processing · 1 restarted"


def test_done_and_impossible() -> None:
    assert describe(check(finished=2, waiting=0, done=True), total=2) == "done · 2/2 images done"
    assert "no online node can serve it yet" in describe(check(is_possible=False))


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (5, 89, 90, 150, 5400, 7320)] == [
        "5 s",
        "89 s",
        "1 min 30 s",
        "2 min 30 s",
        "1 h 30 min",
        "2 h 2 min",
    ]


def test_plain_output_prints_only_changes() -> None:
    stream = io.StringIO()
    with WaitDisplay("req-1", console=Console(file=stream, width=200)) as display:
        display.update(check())
        display.update(check())
        display.update(check(finished=4, waiting=0, done=True))
    assert stream.getvalue().splitlines() == [
        "req-1: queue position 3 · ETA ~42 s · 0/4 images done",
        "req-1: done · 4/4 images done",
    ]
