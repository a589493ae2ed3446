"""What the pod and container services tell NRI: criproxy's pods and containers as NRI's
messages, and the events at each step, with their failures turned into CRI errors.

A plugin's veto fails the CRI call (FAILED_PRECONDITION naming the plugin). Events after
the fact (a stop, a removal, the post- events) cannot undo anything: a plugin's error
there is logged and the call goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from criproxy._generated.nri import api_pb2 as nri
from criproxy.errors import FailedPrecondition
from criproxy.nri.adaptation import PluginError, container_message

if TYPE_CHECKING:
    from collections.abc import Iterable

    from criproxy.containers.model import Container
    from criproxy.sandbox.model import Sandbox

log = structlog.get_logger("criproxy.nri")

_STATES = {
    "created": nri.CONTAINER_CREATED,
    "running": nri.CONTAINER_RUNNING,
    "exited": nri.CONTAINER_STOPPED,
}


def pod(s: Sandbox) -> nri.PodSandbox:
    meta = s.config.metadata
    message = nri.PodSandbox(
        id=s.id,
        name=meta.name,
        uid=meta.uid,
        namespace=meta.namespace,
        labels=dict(s.config.labels),
        annotations=dict(s.config.annotations),
        runtime_handler=s.runtime_handler,
        pid=s.pid,
        ips=[ip for ip in (s.ip, *s.additional_ips) if ip],
    )
    if s.config.cgroup_parent:
        message.linux.cgroup_parent = s.config.cgroup_parent
    if s.netns:
        message.linux.namespaces.append(nri.LinuxNamespace(type="network", path=s.netns))
    return message


def container(c: Container, spec: dict[str, Any] | None) -> nri.Container:
    return container_message(
        c.id,
        c.sandbox_id,
        c.config.name,
        _STATES.get(c.state, nri.CONTAINER_UNKNOWN),
        spec or {},
        labels=tuple(c.config.labels.items()),
        pid=c.pid if c.state == "running" else 0,
        created_at=c.created_at_ns,
        started_at=c.started_at_ns,
        finished_at=c.finished_at_ns,
        exit_code=c.exit_code,
    )


def snapshot(
    pods: Iterable[Sandbox], containers: Iterable[tuple[Container, dict[str, Any] | None]]
) -> tuple[list[nri.PodSandbox], list[nri.Container]]:
    """What a plugin that just connected is synchronised with."""
    return [pod(p) for p in pods], [container(c, spec) for c, spec in containers]


def vetoed(err: PluginError) -> FailedPrecondition:
    return FailedPrecondition(str(err))


def logged(event: str, err: Exception, **ids: str) -> None:
    log.warning("NRI plugin failed an event after the fact", nri_event=event, error=str(err), **ids)
