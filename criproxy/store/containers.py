"""The CRI containers criproxy knows: records, their OCI specs, names, pod membership."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from criproxy.errors import FailedPrecondition
from criproxy.store.index import GatedIndex
from criproxy.store.names import NameRegistrar

if TYPE_CHECKING:
    from criproxy.containers.model import Container
    from criproxy.store.gate import RecoveredGate


class ContainerStore(GatedIndex["Container"]):
    def __init__(self, gate: RecoveredGate) -> None:
        super().__init__(gate, "container", "container_id")
        self.names = NameRegistrar("container")
        self.specs: dict[str, dict[str, Any]] = {}
        """The OCI spec each container was created (or last updated) with."""
        self.undelivered: set[str] = set()
        """Containers whose CreateContainer call went away before the answer: a retry of
        the same name gets the container instead of ALREADY_EXISTS."""
        self._members: dict[str, dict[str, None]] = {}
        """Pod id -> its container ids, in creation order."""

    # --- queries (memory only) ----------------------------------------------------------

    def running(self, container_id: str) -> Container:
        """A container that runs (exec, attach, log reopen need one): NOT_FOUND or
        FAILED_PRECONDITION naming its state otherwise."""
        container = self.get(container_id)
        if container.state != "running":
            raise FailedPrecondition(
                f"container {container.id} is {container.state.upper()}, not RUNNING"
            )
        return container

    def all(self) -> list[Container]:
        self.gate.require()
        return self.index.values()

    def all_if_ready(self) -> list[Container]:
        """Every container, or none before the first recovery (background work)."""
        return self.index.values() if self.gate.is_open else []

    def pod_containers(self, sandbox_id: str) -> tuple[Container, ...]:
        ids = self._members.get(sandbox_id, {})
        return tuple(c for c in (self.index.get(i) for i in ids) if c is not None)

    def by_pod(self, sandbox_ids: list[str]) -> dict[str, list[Container]]:
        return {i: list(self.pod_containers(i)) for i in sandbox_ids}

    # --- changes ------------------------------------------------------------------------

    def put(self, container: Container, spec: dict[str, Any] | None = None) -> None:
        self.index.put(container)
        self._members.setdefault(container.sandbox_id, {})[container.id] = None
        if spec is not None:
            self.specs[container.id] = spec

    def remove(self, container_id: str) -> None:
        container = self.index.pop(container_id)
        self.specs.pop(container_id, None)
        self.names.release(container_id)
        self.undelivered.discard(container_id)
        if container is not None:
            members = self._members.get(container.sandbox_id)
            if members is not None:
                members.pop(container_id, None)
                if not members:
                    del self._members[container.sandbox_id]
