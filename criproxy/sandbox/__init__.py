"""Pod sandboxes: the pause container, its network namespace and CNI network, pod files,
user namespaces, and the per-pod loops that serialise every change of a pod.

One module per call (`run`, `stop`, `remove`, `update`; `exits` for pause task exits and
reconciles) over the sandbox store and a small dependency object (`deps.PodDeps`);
`service.SandboxService` is the facade the CRI servicer calls. Recovery lives in
`criproxy.recovery`.
"""

from criproxy.sandbox.model import PodConfig, Sandbox
from criproxy.sandbox.service import SandboxService

__all__ = ["PodConfig", "Sandbox", "SandboxService"]
