"""The errors the client library raises, and the CLI turns into one line on stderr."""

from __future__ import annotations


class HordeClientError(Exception):
    """Base of every error the client raises on purpose (as opposed to a bug)."""


class HordeAPIError(HordeClientError):
    """The coordinator answered with its `{message, rc}` error body (or something unparseable)."""

    def __init__(self, status: int, rc: str, message: str, errors: dict[str, str] | None = None) -> None:
        self.status = status
        self.rc = rc
        self.message = message
        self.errors = errors or {}
        super().__init__(f"{message} ({rc})")

    def describe(self) -> str:
        """The message with any per-field reasons folded in, still on one line."""
        if not self.errors:
            return f"{self.message} ({self.rc})"
        fields = "; ".join(f"{name}: {reason}" for name, reason in self.errors.items())
        return f"{self.message} [{fields}] ({self.rc})"


class CoordinatorUnreachable(HordeClientError):
    """No HTTP answer at all: connection refused, DNS failure, timeout."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach coordinator at {url}: {reason}")


class UserError(HordeClientError):
    """Something the user can fix: a bad flag value, a missing file, a missing key."""


class Interrupted(HordeClientError):
    """Ctrl-C while waiting; by the time it is raised the user's choice has been carried out."""


class RequestFaulted(HordeClientError):
    """The request ended without images (every attempt at it faulted)."""
