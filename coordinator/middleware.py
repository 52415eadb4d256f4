"""Every failure leaves as AI Horde's `{message, rc}` JSON body; nothing leaves as a bare 500."""

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from coordinator.errors import HordeError
from coordinator.storage import StorageUnavailable
from protocol.errors import RC

log = logging.getLogger("horde.coordinator.http")

HTTP_CODES = {404: RC.NOT_FOUND, 405: RC.METHOD_NOT_ALLOWED, 413: RC.BODY_TOO_LARGE}


@web.middleware
async def horde_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
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
