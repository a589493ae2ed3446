from __future__ import annotations

import grpc
import pytest

from criproxy import errors
from criproxy.containerd.errors import from_rpc_error
from criproxy.cri.errors import status_code


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.UNKNOWN, errors.Internal),
        (grpc.StatusCode.INTERNAL, errors.Internal),
    ],
)
def test_containerd_codes_map_to_project_errors(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(code, 'container "x": not found', "get container x")
    assert type(err) is cls
    assert "get container x" in err.message
    assert 'container "x": not found' in err.message


def test_unavailable_says_containerd_is_unavailable() -> None:
    err = from_rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused", "version")
    assert err.message.startswith("containerd is unavailable")


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unimplemented("x"), grpc.StatusCode.UNIMPLEMENTED),
        (errors.Internal("x"), grpc.StatusCode.INTERNAL),
        (errors.CriproxyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_domain_errors_map_to_cri_status_codes(
    err: errors.CriproxyError, code: grpc.StatusCode
) -> None:
    assert status_code(err) == code


def test_subclass_maps_like_its_base() -> None:
    class PodNotFound(errors.NotFound):
        pass

    assert status_code(PodNotFound("x")) == grpc.StatusCode.NOT_FOUND


def test_a_deadline_reached_inside_containerd_is_deadline_exceeded() -> None:
    """A shim's ttrpc error carries Go's context.DeadlineExceeded as text: UNKNOWN on the wire."""
    from criproxy import errors

    err = from_rpc_error(
        grpc.StatusCode.UNKNOWN, "context deadline exceeded: unknown", "checkpoint task x"
    )
    assert isinstance(err, errors.DeadlineExceeded)
    other = from_rpc_error(grpc.StatusCode.UNKNOWN, "runc failed: exit status 1", "start task x")
    assert isinstance(other, errors.Internal)
