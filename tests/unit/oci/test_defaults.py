"""containerd's default Linux spec (populateDefaultUnixSpec)."""

from __future__ import annotations

import json

from criproxy.oci import default_mounts, default_namespaces, default_spec


def test_default_spec_matches_containerds() -> None:
    spec = default_spec("k8s.io", "abc")
    assert spec["ociVersion"] == "1.0.2-dev"
    assert spec["root"] == {"path": "rootfs"}
    process = spec["process"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["cwd"] == "/"
    assert "env" not in process
    assert "args" not in process
    assert process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    caps = process["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert caps["bounding"] == caps["effective"] == caps["permitted"]
    assert len(caps["bounding"]) == 14
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    linux = spec["linux"]
    assert linux["cgroupsPath"] == "/k8s.io/abc"
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert [ns["type"] for ns in linux["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert len(linux["maskedPaths"]) == 11
    assert len(linux["readonlyPaths"]) == 5


def test_default_mounts_in_containerds_order() -> None:
    assert [(m["destination"], m["type"], m["source"]) for m in default_mounts()] == [
        ("/proc", "proc", "proc"),
        ("/dev", "tmpfs", "tmpfs"),
        ("/dev/pts", "devpts", "devpts"),
        ("/dev/shm", "tmpfs", "shm"),
        ("/dev/mqueue", "mqueue", "mqueue"),
        ("/sys", "sysfs", "sysfs"),
        ("/run", "tmpfs", "tmpfs"),
    ]
    shm = default_mounts()[3]
    assert shm["options"] == ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]


def test_defaults_are_fresh_on_every_call() -> None:
    first = default_spec("k8s.io", "abc")
    first["mounts"][0]["options"].append("rw")
    first["linux"]["namespaces"].pop()
    default_namespaces()[0]["path"] = "/proc/1/ns/pid"
    assert json.dumps(default_spec("k8s.io", "abc")) != json.dumps(first)
    assert default_spec("k8s.io", "abc")["mounts"][0]["options"] == ["nosuid", "noexec", "nodev"]
    assert default_namespaces()[0] == {"type": "pid"}
