"""The error body every API failure returns, and the return codes (`rc`) we use.

The codes are AI Horde's where AI Horde has one, so existing clients that branch on `rc`
keep working; codes we added (signatures, rate limits, storage) are marked below.
"""

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    rc: str
    errors: dict[str, str] | None = None


class RC:
    """Return codes, as plain strings so handlers and clients compare them directly."""

    # AI Horde's own codes.
    MISSING_PROMPT = "MissingPrompt"
    VALIDATION = "ValidationError"
    INVALID_SIZE = "InvalidSize"
    TOO_MANY_STEPS = "TooManySteps"
    IMAGE_VALIDATION_FAILED = "ImageValidationFailed"
    SOURCE_IMAGE_UNREADABLE = "SourceImageUnreadable"
    INPAINTING_MISSING_MASK = "InpaintingMissingMask"
    INVALID_API_KEY = "InvalidAPIKey"
    WRONG_CREDENTIALS = "WrongCredentials"
    NOT_OWNER = "NotOwner"
    NOT_ADMIN = "NotAdmin"
    ANON_FORBIDDEN = "AnonForbidden"
    ANON_FORBIDDEN_WORKER = "AnonForbiddenWorker"
    WORKER_MAINTENANCE = "WorkerMaintenance"
    WORKER_NAME_EXISTS = "WorkerNameAlreadyExists"
    NAME_EXISTS = "NameAlreadyExists"
    KUDOS_UPFRONT = "KudosUpfront"
    INVALID_JOB_ID = "InvalidJobID"
    REQUEST_NOT_FOUND = "RequestNotFound"
    WORKER_NOT_FOUND = "WorkerNotFound"
    USER_NOT_FOUND = "UserNotFound"
    DUPLICATE_GEN = "DuplicateGen"
    ABORTED_GEN = "AbortedGen"
    REQUEST_EXPIRED = "RequestExpired"
    KUDOS_TRANSFER_TO_ANON = "KudosTransferToAnon"
    KUDOS_TRANSFER_TO_SELF = "KudosTransferToSelf"
    KUDOS_TRANSFER_NOT_ENOUGH = "KudosTransferNotEnough"
    KUDOS_VALIDATION = "KudosValidationError"
    TOO_LONG_USER_NAME = "TooLongUserName"
    TOO_MANY_PROMPTS = "TooManyPrompts"
    # Ours.
    NOT_FOUND = "NotFound"
    METHOD_NOT_ALLOWED = "MethodNotAllowed"
    BODY_TOO_LARGE = "BodyTooLarge"
    INVALID_JSON = "InvalidJSON"
    RATE_LIMITED = "RateLimited"
    REGISTRATION_CLOSED = "RegistrationClosed"
    UPLOAD_TOKEN_INVALID = "UploadTokenInvalid"
    UPLOAD_MISSING = "UploadMissing"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    INTERNAL = "InternalServerError"
    # AI Horde's generic code, which it also answers for an account's worker limit (3 untrusted, 20 trusted).
    FORBIDDEN = "Forbidden"
    # An apikey of one account with a signature by another's key (AI Horde has no signatures).
    APIKEY_SIGNATURE_MISMATCH = "ApikeySignatureMismatch"
    # A signature that verifies, but for another coordinator's origin (a cross-network replay).
    SIGNATURE_WRONG_ORIGIN = "SignatureWrongOrigin"
    # Connection limits (coordinator/connections.py): per address, and read timeouts.
    TOO_MANY_CONNECTIONS = "TooManyConnections"
    TOO_MANY_LONG_POLLS = "TooManyLongPolls"
    REQUEST_TIMEOUT = "RequestTimeout"
    # A node's image whose size is not the one its job asked for (AI Horde does not compare them).
    IMAGE_SIZE_MISMATCH = "ImageSizeMismatch"
    # AI Horde's codes for a source image past its bounds (protocol/images.py): dimensions, bytes.
    SOURCE_IMAGE_RESOLUTION_EXCEEDED = "SourceImageResolutionExceeded"
    SOURCE_IMAGE_SIZE_EXCEEDED = "SourceImageSizeExceeded"
    # A webhook whose host is (or resolves to) a loopback, link-local or private address, or no address.
    WEBHOOK_REFUSED = "WebhookRefused"
    # A request parameter no node of this network honours (docs/api.md's table): refused, never dropped.
    UNSUPPORTED_PARAMETER = "UnsupportedParameter"
    # AI Horde's codes: ControlNet without a source image; a style it does not know.
    CONTROLNET_SOURCE_MISSING = "ControlNetSourceMissing"
    # AI Horde's codes: a control type with no ControlNet for the model's baseline; ControlNet on a baseline
    # that takes none.
    CONTROLNET_UNSUPPORTED = "ControlNetUnsupported"
    CONTROLNET_MISMATCH = "ControlNetMismatch"
    STYLE_NOT_FOUND = "StyleNotFound"
    # AI Horde's code for a moderator's action (PUT /v2/users/{id}) by an account that is not one.
    NOT_MODERATOR = "NotModerator"
    # AI Horde's codes for shared keys (coordinator/sharing.py): spent, expired, short of a request's price,
    # unknown. Ours: a request past the key's per-image limits (pixels, steps).
    SHARED_KEY_EMPTY = "SharedKeyEmpty"
    SHARED_KEY_EXPIRED = "SharedKeyExpired"
    SHARED_KEY_INSUFFICIENT = "SharedKeyInsufficientKudos"
    SHARED_KEY_INVALID = "SharedKeyInvalid"
    SHARED_KEY_LIMIT = "SharedKeyLimit"
    # AI Horde's codes for styles (coordinator/styling.py): a prompt without {p} or {np}, a policy's
    # `overridable` under another mode, a policy that names what it cannot, a request above a ceiling.
    STYLE_PROMPT_MISSING_VARS = "StylePromptMissingVars"
    STYLE_OVERRIDABLE_MISPLACED = "StylePolicyOverridableMisplaced"
    STYLE_DECLARATION_INVALID = "StyleDeclarationInvalid"
    STYLE_ABOVE_CEILING = "StyleParameterAboveCeiling"
