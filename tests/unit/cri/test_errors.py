"""The one mapping of domain errors to gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from criproxy import errors
from criproxy.cri.errors import status_code
from criproxy.oci.spec import SpecError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
        (errors.Internal, grpc.StatusCode.INTERNAL),
    ],
)
def test_each_domain_error_has_its_code(
    error: type[errors.CriproxyError], code: grpc.StatusCode
) -> None:
    assert status_code(error("x")) == code


def test_every_domain_error_class_is_mapped() -> None:
    unmapped = [
        cls.__name__
        for cls in errors.CriproxyError.__subclasses__()
        if status_code(cls("x")) == grpc.StatusCode.INTERNAL and cls is not errors.Internal
    ]
    assert unmapped == []


def test_a_subclass_maps_like_its_nearest_listed_base() -> None:
    assert status_code(SpecError("bad spec")) == grpc.StatusCode.INVALID_ARGUMENT


def test_the_base_error_itself_is_internal() -> None:
    assert status_code(errors.CriproxyError("x")) == grpc.StatusCode.INTERNAL
