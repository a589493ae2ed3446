"""Stop signals by name: CRI's enum names (`SIGRTMINPLUS3`), an image's StopSignal
(`SIGQUIT`, `QUIT`, `3`, `SIGRTMIN+3`, `RTMAX-1`) and the numbers they stand for.

A container's stop signal is kept under CRI's name, so its status reports it as given;
real-time signals are counted from the C library's SIGRTMIN (34 on glibc, as Go's
runtimes count them), which Python's `signal.Signals` names only at both ends.
"""

from __future__ import annotations

import re
import signal

DEFAULT = "SIGTERM"
_RT = re.compile(r"^SIGRT(MIN|MAX)(?:(PLUS|MINUS|\+|-)(\d+))?$")


def number(name: str) -> int:
    """The signal a stored name stands for; SIGTERM for "" or a name not known."""
    text = name or DEFAULT
    match = _RT.match(text)
    if match is not None:
        base = int(signal.SIGRTMIN) if match.group(1) == "MIN" else int(signal.SIGRTMAX)
        offset = int(match.group(3) or 0)
        value = base + offset if match.group(2) in ("PLUS", "+") else base - offset
        return (
            value if int(signal.SIGRTMIN) <= value <= int(signal.SIGRTMAX) else int(signal.SIGTERM)
        )
    try:
        return int(signal.Signals[text])
    except KeyError:
        return int(signal.SIGTERM)


def from_image(value: str) -> str:
    """An image's StopSignal as the name a container keeps; SIGTERM for one not known."""
    text = value.strip().upper()
    if text.isdigit():
        return _name(int(text))
    name = text if text.startswith("SIG") else f"SIG{text}"
    if _RT.match(name) is not None:
        return _name(number(name))
    return name if name in signal.Signals.__members__ else DEFAULT


def _name(value: int) -> str:
    """CRI's name of a signal number."""
    low, high = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if low < value < high:
        middle = (low + high) // 2
        if value - low <= middle - low:
            return f"SIGRTMINPLUS{value - low}"
        return f"SIGRTMAXMINUS{high - value}"
    try:
        return signal.Signals(value).name
    except ValueError:
        return DEFAULT
