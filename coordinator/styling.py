"""Styles: prompt templates and parameters a request names with `style`, kept as AI Horde keeps them.

`apply_style` is the one rule of what a style does to a request (pure); `Styles` keeps them (create,
read, list, change, delete: the owner only) and applies the one a request names, by id or by name.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from coordinator.auth import Caller, require_account
from coordinator.errors import HordeError, bad_request, forbidden
from coordinator.services import Services
from coordinator.storage import styles as rows
from coordinator.storage.base import NameTaken
from coordinator.storage.sql import Tx
from coordinator.storage.styles import StyleRecord
from protocol.errors import RC
from protocol.generation import GenerationParams, GenerationRequest
from protocol.styles import CEILING_PARAMS, StyleInput, StyleModify, StylePatch, StyleStable

STYLES_PER_ACCOUNT = 50  # a bound on every input (docs/security.md)
PAGE = 25  # AI Horde's page of styles


def not_found(name: str) -> HordeError:
    return HordeError(404, RC.STYLE_NOT_FOUND, f"Style {name!r} not found.")


def render_prompt(template: str, prompt: str, negative: str | None) -> str:
    """The template with `{p}` and `{np}` filled. A negative prompt goes after `###`: the template's own, or
    one put before it when the template has none."""
    if negative and "###" not in template:
        negative = "###" + negative
    return template.replace("{p}", prompt).replace("{np}", negative or "")


def merged_params(style: StyleRecord, params: GenerationParams) -> dict[str, Any]:
    """The style's params, with those of the request its policy lets through; `n` is always the request's.
    A value the request set above a ceiling is refused, never trimmed."""
    policy = style.policy
    sent = params.model_dump(include=params.model_fields_set)
    mode = policy.get("override", "none")
    if mode == "all":
        handed = dict(sent)
    elif mode == "listed":
        handed = {name: value for name, value in sent.items() if name in policy.get("overridable", [])}
    else:
        handed = {}
    handed["n"] = params.n
    for name, ceiling in (policy.get("ceilings") or {}).items():
        if name in handed and handed[name] > ceiling:
            message = f"This style allows {name} up to {ceiling}; {handed[name]} asked."
            raise bad_request(RC.STYLE_ABOVE_CEILING, message)
    return {**style.params, **handed}


def apply_style(style: StyleRecord, body: GenerationRequest) -> GenerationRequest:
    """The request as the style makes it: its prompt in the template, its params by the policy, the style's
    models when it names any."""
    data = body.model_dump(exclude={"style"})
    data["prompt"] = render_prompt(style.prompt, body.positive_prompt, body.negative_prompt)
    data["params"] = merged_params(style, body.params)
    data["models"] = style.models or body.models
    try:
        return GenerationRequest.model_validate(data)
    except ValidationError as error:
        raise bad_request(
            RC.VALIDATION, f"The request with style {style.name!r} applied is not valid: {error.errors()[0]['msg']}."
        ) from error


def declaration_refusal(body: StyleInput) -> HordeError | None:
    """Why a style cannot be written as sent (AI Horde's codes); None: it can."""
    if body.prompt is not None and ("{p}" not in body.prompt or "{np}" not in body.prompt):
        return bad_request(
            RC.STYLE_PROMPT_MISSING_VARS, "A style's prompt needs '{p}' (the prompt) and '{np}' (the negative prompt)."
        )
    if body.template_fields:
        return bad_request(RC.UNSUPPORTED_PARAMETER, "template_fields: this network fills only {p} and {np}.")
    if body.sharedkey is not None:
        return bad_request(RC.UNSUPPORTED_PARAMETER, "sharedkey: styles here are never funded by a shared key.")
    policy = body.parameter_policy
    if policy.overridable and policy.override != "listed":
        return bad_request(RC.STYLE_OVERRIDABLE_MISPLACED, "overridable is read only under override 'listed'.")
    unknown = set(policy.overridable or []) - set(GenerationParams.model_fields)
    handed = {"none": set(), "listed": set(policy.overridable or []), "all": set(CEILING_PARAMS)}[policy.override]
    capped = set(policy.ceilings or {})
    if unknown or capped - set(CEILING_PARAMS) or capped - handed - {"n"}:
        return bad_request(
            RC.STYLE_DECLARATION_INVALID,
            f"Overridable params must be params ({sorted(unknown)}), and "
            f"ceilings only on {CEILING_PARAMS} that the request may set.",
        )
    return None


def stable(style: StyleRecord, creator: str) -> StyleStable:
    return StyleStable(
        id=style.id,
        name=style.name,
        info=style.info,
        prompt=style.prompt,
        params=style.params,
        public=style.public,
        nsfw=style.nsfw,
        tags=style.tags,
        models=style.models,
        parameter_policy=style.policy,
        creator=creator,
        use_count=style.use_count,
        updated=datetime.fromtimestamp(style.updated, UTC).isoformat(),
    )


class Styles:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def create(self, caller: Caller, body: StyleInput) -> StyleModify:
        owner = require_account(caller)
        if (refused := declaration_refusal(body)) is not None:
            raise refused
        now = self.services.clock()
        style = StyleRecord(
            id=str(uuid.uuid4()),
            name=body.name,
            owner_id=owner.id,
            public=body.public,
            created=now,
            updated=now,
            prompt=body.prompt,
        )
        _fill(style, body, body.model_fields_set | {"params", "parameter_policy"})
        async with self.services.database.transaction() as tx:
            if await rows.count_styles(tx, owner.id) >= STYLES_PER_ACCOUNT:
                raise forbidden(RC.FORBIDDEN, f"An account may keep at most {STYLES_PER_ACCOUNT} styles.")
            await _named(rows.insert_style(tx, style), style.name)
        return StyleModify(id=style.id)

    async def modify(self, caller: Caller, style_id: str, body: StylePatch) -> StyleModify:
        owner = require_account(caller)
        if (refused := declaration_refusal(body)) is not None:
            raise refused
        async with self.services.database.transaction() as tx:
            style = await self._owned(tx, owner.id, style_id)
            _fill(style, body, body.model_fields_set)
            style.updated = self.services.clock()
            await _named(rows.save_style(tx, style), style.name)
        return StyleModify(id=style.id)

    async def delete(self, caller: Caller, style_id: str) -> None:
        owner = require_account(caller)
        async with self.services.database.transaction() as tx:
            await rows.delete_style(tx, (await self._owned(tx, owner.id, style_id)).id)

    async def show(self, column: str, value: str) -> StyleStable:
        async with self.services.database.reader() as tx:
            style = await self._find(tx, column, value)
            owner = await tx.account_by("id", style.owner_id)
        return stable(style, owner.display_name if owner else "")

    async def listed(self, order: str, page: int, tag: str | None, model: str | None) -> list[StyleStable]:
        async with self.services.database.reader() as tx:
            found = [
                style
                for style in await rows.public_styles(tx, order)
                if (tag is None or tag in style.tags) and (model is None or model in style.models)
            ]
            shown = found[(page - 1) * PAGE : page * PAGE]
            owners = {style.owner_id: await tx.account_by("id", style.owner_id) for style in shown}
        return [
            stable(style, owners[style.owner_id].display_name if owners[style.owner_id] else "")  # type: ignore[union-attr]
            for style in shown
        ]

    async def applied(self, body: GenerationRequest) -> tuple[GenerationRequest, str | None]:
        """The request with the style it names applied (by id, else by name), and that style's id."""
        if body.style is None:
            return body, None
        async with self.services.database.reader() as tx:
            style = await rows.style_by(tx, "id", body.style) or await rows.style_by(tx, "name", body.style)
        if style is None:
            raise not_found(body.style)
        return apply_style(style, body), style.id

    @staticmethod
    async def used(tx: Tx, style_id: str | None) -> None:
        """Within the transaction that accepts a request made with the style: its `use_count`, a measured figure."""
        if style_id is not None:
            await rows.count_use(tx, style_id)

    async def _find(self, tx: Tx, column: str, value: str) -> StyleRecord:
        style = await rows.style_by(tx, column, value)
        if style is None:
            raise not_found(value)
        return style

    async def _owned(self, tx: Tx, owner_id: int, style_id: str) -> StyleRecord:
        style = await self._find(tx, "id", style_id)
        if style.owner_id != owner_id:
            raise forbidden(RC.NOT_OWNER, "Only the style's creator may change or delete it.")
        return style


def _fill(style: StyleRecord, body: StyleInput, sent: set[str]) -> None:
    """Copy the fields sent onto the record; params as their creator set them (the defaults stay the request's)."""
    for name in sent & {"name", "info", "prompt", "public", "nsfw", "tags", "models"}:
        setattr(style, name, getattr(body, name))
    if "params" in sent:
        style.params = body.params.model_dump(include=body.params.model_fields_set - {"n"})
    if "parameter_policy" in sent:
        style.policy = body.parameter_policy.model_dump(exclude_none=True)


async def _named(write: Any, name: str) -> None:
    try:
        await write
    except NameTaken as error:
        raise bad_request(RC.NAME_EXISTS, f"A style named {name!r} already exists.") from error
