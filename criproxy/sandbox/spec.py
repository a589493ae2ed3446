"""The pause container's OCI spec, from the pod's config and the pause image's config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from criproxy import host
from criproxy.errors import InvalidArgument
from criproxy.oci import (
    DEFAULT_SANDBOX_OOM_SCORE_ADJ,
    ImageProcess,
    SandboxSpecInput,
    default_capabilities,
    restrict_oom_score_adj,
    sandbox_spec,
    seccomp,
)

if TYPE_CHECKING:
    from criproxy.config import Config
    from criproxy.images.manifest import ImageConfig
    from criproxy.sandbox.model import Sandbox


def localhost_seccomp(profile: str) -> dict[str, Any] | None:
    """A `localhost/<path>` seccomp profile, read and parsed; None for any other kind."""
    if not profile.startswith("localhost/"):
        return None
    path = profile.removeprefix("localhost/")
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise InvalidArgument(f"seccomp profile {path!r} cannot be read: {err.strerror}") from None
    return seccomp.parse_localhost_profile(text)


def _seccomp(profile: str) -> dict[str, Any] | None:
    """The pause container's profile: the runtime default (with the default capabilities,
    which the pause keeps) or a localhost file; none for unconfined."""
    if profile == "runtime/default":
        return seccomp.default_profile(default_capabilities())
    return localhost_seccomp(profile)


def build_spec(sandbox: Sandbox, image: ImageConfig, config: Config) -> dict[str, Any]:
    """containerd's sandbox spec; the pause score is clamped when criproxy may not lower it.
    Blocking (reads /proc and a seccomp profile file): call from a worker thread."""
    pod = sandbox.config
    userns = pod.security.userns
    oom = DEFAULT_SANDBOX_OOM_SCORE_ADJ
    if host.restrict_oom_score_adj(config.restrict_oom_score_adj):
        oom = restrict_oom_score_adj(oom, host.own_oom_score_adj())
    return sandbox_spec(
        SandboxSpecInput(
            id=sandbox.id,
            pod_name=pod.metadata.name,
            pod_namespace=pod.metadata.namespace,
            pod_uid=pod.metadata.uid,
            image=ImageProcess.from_image_config(image.raw.get("config")),
            image_name=sandbox.image,
            sandbox_shm_path=sandbox.shm or "/dev/shm",
            resolv_conf_path=str(Path(sandbox.files_dir) / "resolv.conf"),
            # runc refuses a hostname without a UTS namespace of the pod's own.
            hostname="" if pod.host_network else pod.hostname,
            log_directory=pod.log_directory,
            netns_path=sandbox.netns,
            network=pod.network,
            pid=pod.pid,
            ipc=pod.ipc,
            cgroup_parent=pod.cgroup_parent,
            cgroup_driver=config.cgroup_driver,
            containerd_namespace=config.containerd.namespace,
            run_as_user=pod.security.run_as_user,
            run_as_group=pod.security.run_as_group,
            supplemental_groups=pod.security.supplemental_groups,
            privileged=pod.security.privileged,
            sysctls=pod.sysctls,
            oom_score_adj=oom,
            seccomp=_seccomp(pod.security.seccomp),
            # containerd's pause gets the pod's label for its process and its mounts
            selinux_process_label=pod.security.selinux_label,
            selinux_mount_label=pod.security.selinux_label,
            annotations=pod.annotations,
            userns_path=sandbox.userns,
            uid_mappings=userns.uids if userns else (),
            gid_mappings=userns.gids if userns else (),
        )
    )
