"""AI Horde's clients (horde-sdk) send `null` for a field they leave unset: every request model that
takes such input reads it as "not given" (the default; on PATCH, unchanged), through one validator."""

import pytest
from pydantic import BaseModel

from protocol.sharedkeys import UNLIMITED, SharedKeyInput
from protocol.styles import StyleInput, StylePatch


@pytest.mark.parametrize(
    ("model", "sent", "expected"),
    [
        (SharedKeyInput, {"kudos": None, "expiry": None, "name": "bot"}, {"kudos": 5000, "expiry": UNLIMITED}),
        (StyleInput, {"name": "ink", "prompt": "{p}", "tags": None, "models": None}, {"tags": [], "models": []}),
        (StylePatch, {"name": None, "prompt": None}, {"name": None, "prompt": None}),
    ],
)
def test_null_fields_take_their_defaults(
    model: type[BaseModel], sent: dict[str, object], expected: dict[str, object]
) -> None:
    parsed = model.model_validate(sent)
    assert {key: getattr(parsed, key) for key in expected} == expected
    # Not even "sent": a PATCH changes only the fields sent.
    assert not {key for key, value in sent.items() if value is None} & parsed.model_fields_set
