"""Every failure leaves as AI Horde's `{message, rc}` JSON body; nothing leaves as a bare 500."""

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from coordinator.errors import HordeError, bad_request
from coordinator.routes.endpoint import MAX_PATH_PARAMETER
from coordinator.storage import StorageUnavailable
from protocol.errors import RC

log = logging.getLogger("horde.coordinator.http")

HTTP_CODES = {404: RC.NOT_FOUND, 405: RC.METHOD_NOT_ALLOWED, 413: RC.BODY_TOO_LARGE}


@web.middleware
async def horde_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_path_parameters(request)
        return await handler(request)
    except HordeError as error:
        return error.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        rc = HTTP_CODES.get(error.status, RC.VALIDATION)
        message = "The request body is too large." if error.status == 413 else error.reason
        return HordeError(error.status, rc, message).response()
    except StorageUnavailable as error:
        log.warning("storage unavailable: %s", error)
        return HordeError(503, RC.STORAGE_UNAVAILABLE, "The database is unavailable; retry shortly.").response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return HordeError(500, RC.INTERNAL, "Internal error; nothing was changed.").response()


def check_path_parameters(request: web.Request) -> None:
    """No route's path parameter is longer than MAX_PATH_PARAMETER or holds a NUL (which PostgreSQL's text
    cannot hold): nothing we name has either."""
    for name, value in request.match_info.items():
        if len(value) > MAX_PATH_PARAMETER:
            raise bad_request(
                RC.VALIDATION,
                f"The {name} in the path is longer than {MAX_PATH_PARAMETER} characters.",
                {name: f"at most {MAX_PATH_PARAMETER} characters"},
            )
        if "\0" in value:
            raise bad_request(RC.VALIDATION, f"The {name} in the path contains U+0000 (NUL).", {name: "NUL"})
