"""containerd's gRPC status codes mapped onto the project's error types."""

from __future__ import annotations

import grpc

from criproxy import errors

_BY_CODE: dict[grpc.StatusCode, type[errors.CriproxyError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNIMPLEMENTED: errors.Unimplemented,
}


def from_rpc_error(
    code: grpc.StatusCode, details: str | None, operation: str
) -> errors.CriproxyError:
    """Translate one failed containerd call; `operation` names what criproxy was doing."""
    cls = _BY_CODE.get(code, errors.Internal)
    detail = details or code.name.lower()
    if code is grpc.StatusCode.UNKNOWN and "context deadline exceeded" in detail:
        # The call's deadline, reached inside containerd first: a shim's ttrpc error carries
        # Go's context.DeadlineExceeded as text, and containerd passes it on as UNKNOWN.
        cls = errors.DeadlineExceeded
    if cls is errors.Unavailable:
        return cls(f"containerd is unavailable ({operation}): {detail}")
    return cls(f"containerd {operation}: {detail}")
