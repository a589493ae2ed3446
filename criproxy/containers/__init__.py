"""CRI containers: their snapshot, OCI spec and record, their task, IO and logs, exec.

One module per call family (`create`, `start`, `stop`, `remove`, `exits` for task exits,
OOMs and reconciles, `exec`, `logs`, `resources`) over the container store and a small
dependency object (`deps.ContainerDeps`); `service.ContainerService` is the facade the CRI
servicer and the stats call. Streaming exec/attach sessions and checkpoints will be
modules beside these. Recovery lives in `criproxy.recovery`.
"""

from criproxy.containers.model import Container
from criproxy.containers.service import ContainerService

__all__ = ["Container", "ContainerService"]
