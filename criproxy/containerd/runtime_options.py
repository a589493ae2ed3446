"""The runc shim's options (`containerd.runc.v1.Options`), carried as `Any`.

containerd 1.6 resolves `Any` by its bare type name (no `type.googleapis.com/` prefix);
both forms are read back.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2

from criproxy._generated.containerd.runc.options import oci_pb2

TYPE_URL = "containerd.runc.v1.Options"


@dataclass(frozen=True)
class RuncOptions:
    binary_name: str = ""
    root: str = ""
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    criu_path: str = ""
    criu_image_path: str = ""
    """A task created with this set is restored from these CRIU images at its start."""
    criu_work_path: str = ""

    def to_any(self) -> any_pb2.Any:
        msg = oci_pb2.Options(
            binary_name=self.binary_name,
            root=self.root,
            systemd_cgroup=self.systemd_cgroup,
            no_pivot_root=self.no_pivot_root,
            no_new_keyring=self.no_new_keyring,
            shim_cgroup=self.shim_cgroup,
            criu_path=self.criu_path,
            criu_image_path=self.criu_image_path,
            criu_work_path=self.criu_work_path,
        )
        return any_pb2.Any(type_url=TYPE_URL, value=msg.SerializeToString())

    @classmethod
    def from_any(cls, value: any_pb2.Any) -> RuncOptions | None:
        if value.type_url.rsplit("/", 1)[-1] != TYPE_URL:
            return None
        msg = oci_pb2.Options.FromString(value.value)
        return cls(
            msg.binary_name,
            msg.root,
            msg.systemd_cgroup,
            msg.no_pivot_root,
            msg.no_new_keyring,
            msg.shim_cgroup,
            msg.criu_path,
            msg.criu_image_path,
            msg.criu_work_path,
        )
