"""The files anyone may fetch by name: result images (`/v2/images/...`) and requests' source images
and masks (`/v2/sources/...`, for their node). Names are random, so knowing one is the permission, as
with a request's id. A node's upload is never served: it is not checked until its submit."""

from coordinator.errors import not_found
from coordinator.services import Services
from protocol.errors import RC

CONTENT_TYPES = {"webp": "image/webp", "src": "application/octet-stream"}
PRIVATE_SUFFIX = ".upload"


class Gallery:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def file(self, name: str) -> tuple[bytes, str]:
        """The file's bytes and content type; 404 for a name that is not ours, missing, or an upload."""
        data = None
        if not name.endswith(PRIVATE_SUFFIX):
            try:
                data = await self.services.images.read(name)
            except ValueError:  # not a name the store could have made
                pass
        if data is None:
            raise not_found("image", RC.NOT_FOUND)
        return data, CONTENT_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
