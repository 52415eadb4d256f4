"""HTTP handlers, one module per area of the API. Each module lists its endpoints in
`ENDPOINTS`; the app registers them and the OpenAPI document is generated from them."""

from coordinator.routes import (
    accounts,
    generate,
    jobs,
    notices,
    sharedkeys,
    status,
    stream,
    styles,
    verification,
    workers,
)
from coordinator.routes.endpoint import Endpoint

ENDPOINTS: list[Endpoint] = [
    *generate.ENDPOINTS,
    *jobs.ENDPOINTS,
    *accounts.ENDPOINTS,
    *workers.ENDPOINTS,
    *status.ENDPOINTS,
    *notices.ENDPOINTS,
    *sharedkeys.ENDPOINTS,
    *styles.ENDPOINTS,
    *stream.ENDPOINTS,
    *verification.ENDPOINTS,
]
