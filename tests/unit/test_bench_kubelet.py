"""bench.kubelet reads the kubelet's kills from its klog lines (local time, no year)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from bench.kubelet import kill_times

if TYPE_CHECKING:
    from pathlib import Path


def test_kill_times_from_klog_lines_after_the_removal(tmp_path: Path) -> None:
    removed = datetime(2026, 12, 3, 8, 43, 9, 400000).timestamp()  # local, as klog
    log = tmp_path / "kubelet.log"
    log.write_text(
        "\n".join(
            [
                'I1203 08:43:05.595587    2874 kuberuntime_container.go:809] "Killing container'
                ' with a grace period" pod="ns/before"',
                'I1203 08:43:09.450837    2874 kubelet.go:2344] "SyncLoop REMOVE" source="file"',
                'I1203 08:43:10.595587    2874 kuberuntime_container.go:809] "Killing container'
                ' with a grace period" pod="ns/a"',
                "not a klog line Killing container with a grace period",
                'I1203 08:43:12.250000    2874 kuberuntime_container.go:809] "Killing container'
                ' with a grace period" pod="ns/b"',
            ]
        )
    )
    times = kill_times(log, removed)
    assert [round(t - removed, 6) for t in times] == [1.195587, 2.85]
