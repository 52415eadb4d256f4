"""horde-sdk 0.33.3, strict, through shared keys and image styles: its own request and response models."""

from horde_sdk.ai_horde_api.ai_horde_clients import AIHordeAPIManualClient
from horde_sdk.ai_horde_api.apimodels import (
    AllStylesImageRequest,
    AllStylesImageResponse,
    CreateStyleImageRequest,
    DeleteStyleImageRequest,
    DeleteStyleImageResponse,
    ExpiryStrSharedKeyDetailsResponse,
    ImageGenerateAsyncRequest,
    ImageGenerateAsyncResponse,
    ImageGenerationInputPayload,
    ModelStyleInputParamsStable,
    ModifyStyleImageRequest,
    ModifyStyleImageResponse,
    SharedKeyCreateRequest,
    SharedKeyDeleteRequest,
    SharedKeyDeleteResponse,
    SharedKeyDetailsRequest,
    SharedKeyModifyRequest,
    SingleStyleImageByIDRequest,
    SingleStyleImageByNameRequest,
    StyleStable,
)

from conformance.sdk import MODEL, Live, SdkWorker

PRICE = 2.9  # one 64×64 image of 4 steps (protocol/kudos.py)


def request(apikey: str, style: str | None = None, **params: object) -> ImageGenerateAsyncRequest:
    return ImageGenerateAsyncRequest(
        apikey=apikey,
        prompt="a lighthouse ### fog",
        models=[MODEL],
        r2=True,
        style=style,
        params=ImageGenerationInputPayload(
            **{"width": 64, "height": 64, "steps": 4, "sampler_name": "k_euler", **params}
        ),
    )


def test_a_shared_key_made_read_used_changed_and_deleted(live: Live) -> None:
    client = AIHordeAPIManualClient()
    created = client.submit_request(
        SharedKeyCreateRequest(
            apikey=live.requester_key,
            kudos=5,
            name="sdk key",
            max_image_pixels=-1,
            max_image_steps=10,
            max_text_tokens=-1,
        ),
        ExpiryStrSharedKeyDetailsResponse,
    )
    assert isinstance(created, ExpiryStrSharedKeyDetailsResponse), created
    key = str(created.sharedkey_id)
    assert (created.kudos, created.utilized, created.name, created.max_image_steps) == (5, 0, "sdk key", 10)
    accepted = client.submit_request(request(key), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse) and accepted.kudos == PRICE, accepted
    refused = client.submit_request(request(key), ImageGenerateAsyncResponse)  # 2.1 left, 2.9 reserved
    assert not isinstance(refused, ImageGenerateAsyncResponse) and refused.rc == "SharedKeyInsufficientKudos"
    worker = SdkWorker(client, live.worker_key, "conformance-node")
    worker.serve(worker.pop())
    assert worker.rewards == [PRICE]  # funded by the key's owner: moved, not minted
    shown = client.submit_request(SharedKeyDetailsRequest(id=key), ExpiryStrSharedKeyDetailsResponse)
    assert isinstance(shown, ExpiryStrSharedKeyDetailsResponse) and shown.utilized == 3, shown
    changed = client.submit_request(
        SharedKeyModifyRequest(
            apikey=live.requester_key,
            id=key,
            kudos=50,
            name="sdk key",
            max_image_pixels=-1,
            max_image_steps=-1,
            max_text_tokens=-1,
            expiry=3,
        ),
        ExpiryStrSharedKeyDetailsResponse,
    )
    assert isinstance(changed, ExpiryStrSharedKeyDetailsResponse) and changed.kudos == 50 and changed.expiry, changed
    deleted = client.submit_request(SharedKeyDeleteRequest(apikey=live.requester_key, id=key), SharedKeyDeleteResponse)
    assert isinstance(deleted, SharedKeyDeleteResponse), deleted
    gone = client.submit_request(request(key), ImageGenerateAsyncResponse)
    assert not isinstance(gone, ImageGenerateAsyncResponse) and gone.rc == "InvalidAPIKey"


def test_an_image_style_made_listed_used_changed_and_deleted(live: Live) -> None:
    client = AIHordeAPIManualClient()
    params = ModelStyleInputParamsStable(width=64, height=64, steps=6, cfg_scale=3.5)
    made = client.submit_request(
        CreateStyleImageRequest(
            apikey=live.requester_key,
            name="sdk-style",
            prompt="{p}, oil painting ###{np}",
            params=params,
            models=[MODEL],
            tags=["paint"],
        ),
        ModifyStyleImageResponse,
    )
    assert isinstance(made, ModifyStyleImageResponse), made
    listed = client.submit_request(AllStylesImageRequest(tag="paint"), AllStylesImageResponse)
    assert isinstance(listed, AllStylesImageResponse) and [s.id_ for s in listed.root] == [made.id_], listed
    accepted = client.submit_request(request(live.requester_key, style="SDK-STYLE"), ImageGenerateAsyncResponse)
    assert isinstance(accepted, ImageGenerateAsyncResponse), accepted
    popped = SdkWorker(client, live.worker_key, "conformance-node").pop()
    assert popped.payload.prompt == "a lighthouse, oil painting ### fog" and popped.payload.ddim_steps == 6
    assert popped.payload.cfg_scale == 3.5
    by_id = client.submit_request(SingleStyleImageByIDRequest(style_id=made.id_), StyleStable)
    assert isinstance(by_id, StyleStable) and by_id.use_count == 1 and by_id.params.steps == 6, by_id
    by_name = client.submit_request(SingleStyleImageByNameRequest(style_name="sdk-style"), StyleStable)
    assert isinstance(by_name, StyleStable) and by_name.id_ == made.id_
    changed = client.submit_request(
        ModifyStyleImageRequest(
            apikey=live.requester_key,
            style_id=made.id_,
            name="sdk-style",
            prompt="{p}, ink ###{np}",
            params=params,
            sharedkey=None,
        ),
        ModifyStyleImageResponse,
    )
    assert isinstance(changed, ModifyStyleImageResponse), changed
    deleted = client.submit_request(
        DeleteStyleImageRequest(apikey=live.requester_key, style_id=made.id_), DeleteStyleImageResponse
    )
    assert isinstance(deleted, DeleteStyleImageResponse), deleted
    unknown = client.submit_request(request(live.requester_key, style="sdk-style"), ImageGenerateAsyncResponse)
    assert not isinstance(unknown, ImageGenerateAsyncResponse) and unknown.rc == "StyleNotFound"
