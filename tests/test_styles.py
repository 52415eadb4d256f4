"""Image styles (/v2/styles/image) end to end, over real HTTP on both engines: a request naming a style
is made with the style's prompt template and params (what the node is sent, and what it is priced at),
as its parameter policy allows; the style's use is counted; only its creator changes it."""

from typing import Any

import pytest

from coordinator.errors import HordeError
from coordinator.storage.styles import StyleRecord
from coordinator.styling import merged_params, render_prompt
from protocol.generation import GenerationParams
from protocol.kudos import image_kudos
from tests.api_support import MODEL, node, pop_job, requester, small
from tests.conftest import RunningCoordinator, TestAccount
from tests.helpers import Api

WATERCOLOUR = {
    "name": "Watercolour",
    "prompt": "{p}, watercolour ###{np}, photo",
    "models": [MODEL],
    "params": {"width": 64, "height": 64, "steps": 6, "cfg_scale": 3.5},
    "tags": ["paint"],
}


async def new_style(coordinator: RunningCoordinator, owner: TestAccount, **fields: Any) -> str:
    reply = await requester(coordinator, owner).post("/v2/styles/image", {**WATERCOLOUR, **fields})
    assert reply.status == 200, reply.body
    assert reply.body["message"] == "OK" and reply.body["warnings"] == []
    return reply.body["id"]


async def test_a_request_naming_a_style_is_made_with_its_template_and_params(
    coordinator: RunningCoordinator,
) -> None:
    owner = await coordinator.create_account("painter")
    style_id = await new_style(coordinator, owner)
    anonymous = Api(coordinator.url)
    body = {
        "prompt": "a fox ### blurry",
        "style": "watercolour",
        "models": ["other-model"],
        "params": {"width": 512, "height": 512, "steps": 30, "cfg_scale": 9, "n": 2},
    }
    accepted = await anonymous.post("/v2/generate/async", body)
    assert accepted.status == 202, accepted.body
    assert accepted.body["kudos"] == round(2 * image_kudos(width=64, height=64, steps=6), 2)  # the style's price
    worker = node(coordinator, await coordinator.create_account("volunteer"), "painter-node")
    popped = await pop_job(worker, amount=2)
    payload = popped.body["payload"]
    assert payload["prompt"] == "a fox, watercolour ### blurry, photo"
    assert (payload["width"], payload["ddim_steps"], payload["cfg_scale"], payload["n_iter"]) == (64, 6, 3.5, 2)
    assert popped.body["model"] == MODEL  # the style's models, not the request's
    shown = await anonymous.get(f"/v2/styles/image/{style_id}")
    assert shown.status == 200 and shown.body["use_count"] == 1, shown.body
    assert shown.body["creator"] == f"painter#{owner.id}" and shown.body["params"] == WATERCOLOUR["params"]
    by_name = await anonymous.get("/v2/styles/image_by_name/WATERCOLOUR")
    assert by_name.status == 200 and by_name.body["id"] == style_id
    # A dry run prices it the same, and is not a use.
    priced = await anonymous.post("/v2/generate/async", {**body, "dry_run": True})
    assert priced.status == 200 and priced.body["kudos"] == accepted.body["kudos"]
    assert (await anonymous.get(f"/v2/styles/image/{style_id}")).body["use_count"] == 1
    unknown = await anonymous.post("/v2/generate/async", {**small(), "style": "no-such-style"})
    assert (unknown.status, unknown.rc) == (404, "StyleNotFound"), unknown.body


async def test_a_styles_policy_lets_through_only_what_it_lists_and_below_its_ceilings(
    coordinator: RunningCoordinator,
) -> None:
    owner = await coordinator.create_account("painter")
    policy = {"override": "listed", "overridable": ["steps"], "ceilings": {"steps": 10, "n": 2}}
    style_id = await new_style(coordinator, owner, parameter_policy=policy)
    anonymous = Api(coordinator.url)
    accepted = await anonymous.post(
        "/v2/generate/async", {"prompt": "a fox", "style": style_id, "params": {"steps": 8, "cfg_scale": 9}}
    )
    assert accepted.status == 202, accepted.body
    payload = (await pop_job(node(coordinator, owner, "painter-node"))).body["payload"]
    assert (payload["ddim_steps"], payload["cfg_scale"]) == (8, 3.5)  # steps listed, cfg_scale not
    assert payload["prompt"] == "a fox, watercolour ### , photo"
    for params in ({"steps": 11}, {"n": 3}):
        above = await anonymous.post("/v2/generate/async", {"prompt": "a fox", "style": style_id, "params": params})
        assert (above.status, above.rc) == (400, "StyleParameterAboveCeiling"), above.body


async def test_styles_are_listed_changed_and_deleted_by_their_creator_only(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("painter")
    stranger = await coordinator.create_account("stranger")
    public_id = await new_style(coordinator, owner)
    private_id = await new_style(coordinator, owner, name="secret", public=False, tags=["ink"])
    anonymous = Api(coordinator.url)
    listed = await anonymous.get("/v2/styles/image")
    assert listed.status == 200 and [s["id"] for s in listed.body] == [public_id], listed.body
    assert (await anonymous.get("/v2/styles/image?tag=ink")).body == []
    assert len((await anonymous.get(f"/v2/styles/image?model={MODEL}&sort=age")).body) == 1
    assert (await anonymous.get(f"/v2/styles/image/{private_id}")).status == 200  # whoever knows its id
    for method in ("PATCH", "DELETE"):
        reply = await requester(coordinator, stranger).call(method, f"/v2/styles/image/{public_id}", {"info": "x"})
        assert (reply.status, reply.rc) == (403, "NotOwner"), reply.body
    patched = await requester(coordinator, owner).call(
        "PATCH", f"/v2/styles/image/{public_id}", {"prompt": "{p} in ink ###{np}"}
    )
    assert patched.status == 200, patched.body
    shown = (await anonymous.get(f"/v2/styles/image/{public_id}")).body
    assert shown["prompt"] == "{p} in ink ###{np}" and shown["name"] == "Watercolour"  # only what was sent
    deleted = await requester(coordinator, owner).call("DELETE", f"/v2/styles/image/{public_id}")
    assert deleted.status == 200 and deleted.body == {"message": "OK"}
    gone = await anonymous.get(f"/v2/styles/image/{public_id}")
    assert (gone.status, gone.rc) == (404, "StyleNotFound"), gone.body


async def test_a_style_that_cannot_be_honoured_is_refused_when_written(coordinator: RunningCoordinator) -> None:
    owner = await coordinator.create_account("painter")
    await new_style(coordinator, owner)
    api = requester(coordinator, owner)
    for fields, status, rc in [
        ({"prompt": "{p}, watercolour"}, 400, "StylePromptMissingVars"),
        ({"sharedkey": "00000000-0000-0000-0000-000000000000"}, 400, "UnsupportedParameter"),
        ({"template_fields": [{"name": "caption", "description": "what it shows"}]}, 400, "UnsupportedParameter"),
        ({"parameter_policy": {"overridable": ["steps"]}}, 400, "StylePolicyOverridableMisplaced"),
        ({"parameter_policy": {"override": "all", "ceilings": {"cfg_scale": 5}}}, 400, "StyleDeclarationInvalid"),
        ({"parameter_policy": {"ceilings": {"steps": 5}}}, 400, "StyleDeclarationInvalid"),  # steps not handed
        ({"name": "WATERCOLOUR"}, 400, "NameAlreadyExists"),
        ({"name": "x" * 101}, 400, "ValidationError"),
    ]:
        reply = await api.post("/v2/styles/image", {**WATERCOLOUR, "name": "another", **fields})
        assert (reply.status, reply.rc) == (status, rc), (fields, reply.body)
    anonymous = await Api(coordinator.url).post("/v2/styles/image", {**WATERCOLOUR, "name": "anon"})
    assert (anonymous.status, anonymous.rc) == (403, "AnonForbidden"), anonymous.body


def test_the_style_rules_as_pure_functions() -> None:
    """`render_prompt` and `merged_params`: the template and the policy, without a coordinator."""
    assert render_prompt("{p}, ink ###{np}, photo", "a fox", "blur") == "a fox, ink ###blur, photo"
    assert render_prompt("{p}, ink {np}", "a fox", "blur") == "a fox, ink ###blur"  # the template has no ###
    assert render_prompt("{p}, ink {np}", "a fox", None) == "a fox, ink "
    style = StyleRecord(
        id="s",
        name="s",
        owner_id=1,
        public=True,
        created=0,
        updated=0,
        prompt="{p}{np}",
        params={"steps": 6, "cfg_scale": 3.5},
    )
    asked = GenerationParams.model_validate({"steps": 9, "cfg_scale": 9, "n": 2})
    assert merged_params(style, asked) == {"steps": 6, "cfg_scale": 3.5, "n": 2}  # override none: only n
    style.policy = {"override": "listed", "overridable": ["steps"]}
    assert merged_params(style, asked) == {"steps": 9, "cfg_scale": 3.5, "n": 2}
    style.policy = {"override": "all", "ceilings": {"steps": 8}}
    with pytest.raises(HordeError) as refused:
        merged_params(style, asked)
    assert refused.value.rc == "StyleParameterAboveCeiling"
    style.policy = {"override": "all", "ceilings": {"steps": 9}}
    assert merged_params(style, asked) == {"steps": 9, "cfg_scale": 9.0, "n": 2}
