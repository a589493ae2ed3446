"""Pure functions: CRI config + image config -> OCI runtime spec (plain JSON-able dicts).

Nothing here does I/O: whatever the host or the image holds is read by the caller and
passed in. The behaviour is containerd's CRI plugin's (1.6, with later fixes noted).
"""

from criproxy.oci.annotations import passthrough_annotations
from criproxy.oci.defaults import (
    DEFAULT_PATH_ENV,
    OCI_VERSION,
    default_capabilities,
    default_masked_paths,
    default_mounts,
    default_namespaces,
    default_readonly_paths,
    default_spec,
)
from criproxy.oci.spec import (
    DEFAULT_SANDBOX_CPU_SHARES,
    DEFAULT_SANDBOX_OOM_SCORE_ADJ,
    CgroupDriver,
    ImageProcess,
    NamespaceMode,
    SandboxResources,
    SandboxSpecInput,
    SpecError,
    cgroups_path,
    merge_env,
    restrict_oom_score_adj,
    sandbox_spec,
)
from criproxy.oci.user import UserError, needs_lookup, resolve_user, user_string

__all__ = [
    "DEFAULT_PATH_ENV",
    "DEFAULT_SANDBOX_CPU_SHARES",
    "DEFAULT_SANDBOX_OOM_SCORE_ADJ",
    "OCI_VERSION",
    "CgroupDriver",
    "ImageProcess",
    "NamespaceMode",
    "SandboxResources",
    "SandboxSpecInput",
    "SpecError",
    "UserError",
    "cgroups_path",
    "default_capabilities",
    "default_masked_paths",
    "default_mounts",
    "default_namespaces",
    "default_readonly_paths",
    "default_spec",
    "merge_env",
    "needs_lookup",
    "passthrough_annotations",
    "resolve_user",
    "restrict_oom_score_adj",
    "sandbox_spec",
    "user_string",
]
