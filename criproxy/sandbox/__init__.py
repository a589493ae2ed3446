"""Pod sandboxes: the pause container, its network namespace and CNI network, pod files,
the per-pod event loop and recovery."""
