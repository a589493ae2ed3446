"""CNI for pods (the module moves into this package; split by concern next)."""

from criproxy.network.cni.cni import *  # noqa: F403
from criproxy.network.cni.cni import _Network, _PluginProcess, _run_plugin  # noqa: F401
