"""AI Horde's clients send null for "not given": every request model reads it as the field's default
(protocol.generation.NullMeansDefault, the one place that rule lives)."""

from protocol.generation import GenerationRequest
from protocol.jobs import PopRequest


def test_nulls_take_the_defaults_in_every_request_model() -> None:
    request = GenerationRequest.model_validate(
        {"prompt": "a cat", "models": None, "nsfw": None, "params": {"steps": None, "n": None, "seed": None}}
    )
    assert request.models == [] and request.nsfw is False
    assert request.params.steps == 30 and request.params.n == 1 and request.params.seed is None
    pop = PopRequest.model_validate({"name": "n", "models": None, "max_pixels": None, "amount": None, "wait": None})
    assert pop.models == [] and pop.max_pixels == 512 * 512 and pop.amount == 1 and pop.wait == 0.0
