"""The one exception handlers raise to answer with AI Horde's `{message, rc}` error body."""

from aiohttp import web

from protocol.errors import RC, ErrorBody


class HordeError(Exception):
    def __init__(self, status: int, rc: str, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.rc = rc
        self.message = message
        self.errors = errors

    def response(self) -> web.Response:
        body = ErrorBody(message=self.message, rc=self.rc, errors=self.errors)
        return web.json_response(body.model_dump(exclude_none=True), status=self.status)


def not_found(what: str = "request", rc: str = RC.REQUEST_NOT_FOUND) -> HordeError:
    return HordeError(404, rc, f"The {what} was not found. It may have expired or never existed.")


def forbidden(rc: str, message: str) -> HordeError:
    return HordeError(403, rc, message)


def bad_request(rc: str, message: str, errors: dict[str, str] | None = None) -> HordeError:
    return HordeError(400, rc, message, errors)


def unauthorized(rc: str, message: str) -> HordeError:
    return HordeError(401, rc, message)
