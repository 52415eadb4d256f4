"""A reGen-style worker start-up against our coordinator: `models_to_load: "top 2"` resolves through
`GET /v2/stats/img/models` (reGen raises if that fails, so a default reGen cannot start without it), then
the worker pops with those models and looks itself up with `GET /v2/workers/name/{name}`."""

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient
from horde_sdk.ai_horde_api.apimodels import (
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerationInputPayload,
    ImageStatsModelsRequest,
    ImageStatsModelsResponse,
    SingleWorkerDetailsResponse,
    SingleWorkerNameDetailsRequest,
)
from horde_sdk.ai_horde_api.consts import MODEL_STATE

from conformance.sdk import Live, SdkWorker


def request_for(live: Live, client: AIHordeAPIManualClient, model: str) -> str:
    request = ImageGenerateAsyncRequest(
        apikey=live.requester_key,
        prompt=f"an image by {model}",
        models=[model],
        params=ImageGenerationInputPayload(width=64, height=64, steps=4, n=1, sampler_name="k_euler"),
    )
    accepted = client.submit_request(request, ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    return str(accepted.id_)


def top_models(client: AIHordeAPIManualClient, n: int) -> list[str]:
    """reGen's "top N": the models with the most images in the past month."""
    stats = client.submit_request(ImageStatsModelsRequest(model_state=MODEL_STATE.known), ImageStatsModelsResponse)
    assert isinstance(stats, ImageStatsModelsResponse), stats
    return [name for name, _count in sorted(stats.month.items(), key=lambda item: (-item[1], item[0]))[:n]]


def test_regen_startup_top_n_then_pop_then_find_itself(live: Live) -> None:
    client = AIHordeAPIManualClient()
    assert top_models(client, 2) == []  # a new network: reGen starts with no model rather than failing
    history = SdkWorker(client, live.worker_key, "history-node", models=["model-a", "model-b", "model-c"])
    for model in ("model-a", "model-a", "model-a", "model-b", "model-b", "model-c"):
        request_for(live, client, model)
        history.serve(history.pop())
    assert top_models(client, 2) == ["model-a", "model-b"]

    request_for(live, client, "model-c")  # not among the new worker's models
    request_for(live, client, "model-b")
    regen = SdkWorker(client, live.worker_key, "regen-node", models=top_models(client, 2))
    popped = regen.pop()
    assert popped.model == "model-b" and len(popped.ids) == 1, popped
    regen.serve(popped)
    found = client.submit_request(SingleWorkerNameDetailsRequest(worker_name="regen-node"), SingleWorkerDetailsResponse)
    assert isinstance(found, SingleWorkerDetailsResponse), found
    assert found.name == "regen-node" and sorted(found.models or []) == ["model-a", "model-b"]
    assert found.requests_fulfilled == 1 and found.online
