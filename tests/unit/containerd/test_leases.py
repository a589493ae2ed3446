from __future__ import annotations

import subprocess

from criproxy.containerd.leases import owner_alive, this_process


def test_this_process_is_alive_and_names_its_boot_pid_and_start_time() -> None:
    owner = this_process()
    boot, pid, started = owner.split("/")
    assert boot and pid.isdigit() and started.isdigit()
    assert owner_alive(owner)


def test_a_process_that_exited_or_another_boot_or_a_reused_pid_is_not_alive() -> None:
    boot, pid, started = this_process().split("/")
    child = subprocess.Popen(["true"])
    child.wait()
    assert not owner_alive(f"{boot}/{child.pid}/{started}")
    assert not owner_alive(f"another-boot/{pid}/{started}")
    assert not owner_alive(f"{boot}/{pid}/{int(started) + 1}")  # same pid, another process
    assert not owner_alive("")  # a lease made before owners were recorded
    assert not owner_alive("garbage")
