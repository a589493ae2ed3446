from __future__ import annotations

import signal

import pytest

from criproxy._generated.cri.runtime.v1 import api_pb2
from criproxy.containers import signals

_CRI_NAMES = [
    k.removeprefix("SIGNAL_")
    for k in api_pb2.Signal.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if k != "SIGNAL_RUNTIME_DEFAULT"
]


@pytest.mark.parametrize("name", _CRI_NAMES)
def test_every_cri_stop_signal_stands_for_its_own_number(name: str) -> None:
    value = signals.number(name)
    if "RTMIN" in name or "RTMAX" in name:
        assert signal.SIGRTMIN <= value <= signal.SIGRTMAX
        assert signals.from_image(str(value)) == name
    else:
        assert value == signal.Signals[name]


@pytest.mark.parametrize(
    ("image", "name", "value"),
    [
        ("SIGQUIT", "SIGQUIT", signal.SIGQUIT),
        ("quit", "SIGQUIT", signal.SIGQUIT),
        ("9", "SIGKILL", signal.SIGKILL),
        ("SIGRTMIN+3", "SIGRTMINPLUS3", signal.SIGRTMIN + 3),
        ("RTMIN+1", "SIGRTMINPLUS1", signal.SIGRTMIN + 1),
        ("SIGRTMAX-1", "SIGRTMAXMINUS1", signal.SIGRTMAX - 1),
        ("37", "SIGRTMINPLUS3", signal.SIGRTMIN + 3),
        ("SIGRTMIN", "SIGRTMIN", signal.SIGRTMIN),
        ("SIGRTMIN+99", "SIGTERM", signal.SIGTERM),
        ("SIGNOPE", "SIGTERM", signal.SIGTERM),
        ("200", "SIGTERM", signal.SIGTERM),
    ],
)
def test_an_images_stop_signal_is_kept_under_cris_name(image: str, name: str, value: int) -> None:
    assert signals.from_image(image) == name
    assert signals.number(name) == value


def test_no_signal_is_sigterm() -> None:
    assert signals.number("") == signal.SIGTERM
