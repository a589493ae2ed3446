"""The project's error types, shared by every layer.

Lower layers raise these; only `criproxy.cri.errors` turns them into gRPC status codes,
so domain code never deals in transport codes and the kubelet always gets an actionable
message with the right code.
"""


class CriproxyError(Exception):
    """Base of every error criproxy raises on purpose; the message is shown to the caller."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CriproxyError):
    """The request is malformed; nothing was created."""


class NotFound(CriproxyError):
    """The named object does not exist."""


class AlreadyExists(CriproxyError):
    """An object with that id or name exists already."""


class FailedPrecondition(CriproxyError):
    """The object is in a state that does not allow the operation."""


class Unavailable(CriproxyError):
    """A dependency (containerd, a registry) cannot be reached right now; retrying may work."""


class DeadlineExceeded(CriproxyError):
    """The operation did not finish in time."""


class Unimplemented(CriproxyError):
    """The call is not built yet; the honest answer instead of a fake success."""


class Unauthenticated(CriproxyError):
    """A registry refused the credentials (or asked for some and none were given)."""


class DataLoss(CriproxyError):
    """Content did not match its digest: corrupt data from a registry or an archive."""


class ResourceExhausted(CriproxyError):
    """A bounded resource is used up (streaming tokens in flight); retrying later may work."""


class Internal(CriproxyError):
    """A failure of criproxy or of a dependency that retrying will not fix."""


def unwrap(exc: BaseException) -> BaseException:
    """The error that matters inside task-group exception groups: the first domain error."""
    while isinstance(exc, BaseExceptionGroup):
        leaves = list(exc.exceptions)
        exc = next((e for e in leaves if isinstance(unwrap(e), CriproxyError)), leaves[0])
    return exc
