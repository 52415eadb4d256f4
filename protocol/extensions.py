"""Our extension fields in AI Horde's response models, and the one rule that hides them.

Strict AI Horde clients (horde-sdk in its strict mode) refuse fields the AI Horde API does not
define, so an answer carries ours (provenance: job and result signatures, public keys) only when
the client asks for them: the query parameter `provenance=1` or the header `X-Horde-Provenance: 1`
(docs/api.md). Each such field is declared with `ours()`; `hidden_extensions` lists, for one
model instance, the `exclude` argument pydantic needs to leave them all out.
"""

from typing import Any

from pydantic import BaseModel, Field

MARK = "x-horde-extension"
HEADER = "X-Horde-Provenance"
QUERY = "provenance"


def ours(default: Any = None, **kwargs: Any) -> Any:
    """A response field AI Horde does not define: sent only to clients that ask for provenance."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return Field(json_schema_extra={MARK: True}, **kwargs)


def is_extension(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(MARK))


def hidden_extensions(value: Any) -> dict[Any, Any]:
    """pydantic's `exclude` for every extension field in `value` (a model, or a list of them), nested
    models and lists included; empty when there is none."""
    if isinstance(value, BaseModel):
        excluded: dict[Any, Any] = {}
        for name in type(value).model_fields:
            if is_extension(type(value), name):
                excluded[name] = True
            elif inner := hidden_extensions(getattr(value, name)):
                excluded[name] = inner
        return excluded
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return {index: inner for index, item in enumerate(value) if (inner := hidden_extensions(item))}
    return {}
