"""Image styles (`/v2/styles/image`): AI Horde's `ModelStyleInputStable`, `StyleStable` and `StyleModify`.

A style is a prompt template (with `{p}` for the requester's prompt and `{np}` for the negative one) and
generation parameters; a request that names it (`style`, by id or name) is made with them. Its
`parameter_policy` says which of the request's own params survive: none (the default), those `listed`
in `overridable`, or `all`; `ceilings` cap the ones a request may set (`width`, `height`, `steps`, `n`).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.generation import NAME_MAX, REQUEST_MODELS_MAX, GenerationParams, Name, NullMeansDefault

PROMPT_MAX = 20000  # a request's own bound
INFO_MAX = 1000
TAGS_MAX = 10
CEILING_PARAMS = ("width", "height", "steps", "n")  # what an image style may cap, as in AI Horde


class StyleParameterPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    override: Literal["none", "listed", "all"] = "none"
    overridable: list[str] | None = Field(default=None, max_length=40)
    ceilings: dict[str, int] | None = Field(default=None, max_length=len(CEILING_PARAMS))


class StyleInput(NullMeansDefault):
    """`POST /v2/styles/image` (all of it) and `PATCH /v2/styles/image/{id}` (only the fields sent change)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=NAME_MAX)
    info: str | None = Field(default=None, max_length=INFO_MAX)
    prompt: str = Field(min_length=1, max_length=PROMPT_MAX)
    params: GenerationParams = Field(default_factory=GenerationParams)
    public: bool = True
    nsfw: bool = False
    tags: list[Name] = Field(default_factory=list, max_length=TAGS_MAX)
    models: list[Name] = Field(default_factory=list, max_length=REQUEST_MODELS_MAX)
    parameter_policy: StyleParameterPolicy = Field(default_factory=StyleParameterPolicy)
    # Accepted so that they can be refused by name when set (coordinator/styling.py).
    template_fields: list[dict[str, Any]] = Field(default_factory=list, max_length=16)
    sharedkey: str | None = Field(default=None, max_length=36)


class StylePatch(StyleInput):
    """PATCH: every field optional (the style keeps what is not sent)."""

    name: str | None = Field(default=None, min_length=1, max_length=NAME_MAX)  # type: ignore[assignment]
    prompt: str | None = Field(default=None, min_length=1, max_length=PROMPT_MAX)  # type: ignore[assignment]


class StyleExample(BaseModel):
    id: str
    url: str
    primary: bool = False


class StyleStable(BaseModel):
    """A style as `GET /v2/styles/image[/{id}]` and `/v2/styles/image_by_name/{name}` answer it."""

    id: str
    name: str
    info: str | None = None
    prompt: str
    params: dict[str, Any] = Field(default_factory=dict)  # the params its creator set, as sent
    public: bool
    nsfw: bool
    tags: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    parameter_policy: StyleParameterPolicy
    creator: str
    use_count: int
    updated: str  # ISO 8601, UTC
    examples: list[StyleExample] = Field(default_factory=list)
    sharedkey: str | None = None


class StyleWarning(BaseModel):
    code: str
    message: str


class StyleModify(BaseModel):
    """AI Horde's `StyleModify`: the answer to creating or changing a style."""

    id: str
    message: str = "OK"
    warnings: list[StyleWarning] = Field(default_factory=list)
