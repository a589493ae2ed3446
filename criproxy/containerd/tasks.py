"""containerd's tasks: the running process of a container, through its shim."""

from __future__ import annotations

import contextlib
import json
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import any_pb2

from criproxy._generated.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from criproxy._generated.containerd.types.task import task_pb2
from criproxy.containerd.client import DEFAULT_TIMEOUT
from criproxy.errors import DeadlineExceeded, NotFound

if TYPE_CHECKING:
    import builtins
    from collections.abc import Sequence

    from criproxy.containerd.client import Channel
    from criproxy.containerd.types import Mount

_PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
_RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

_ALIVE = ("running", "paused", "pausing", "created")
"""Task states that a SIGKILL must end before the task can be deleted."""

_STATUS = {
    task_pb2.UNKNOWN: "unknown",
    task_pb2.CREATED: "created",
    task_pb2.RUNNING: "running",
    task_pb2.STOPPED: "stopped",
    task_pb2.PAUSED: "paused",
    task_pb2.PAUSING: "pausing",
}


@dataclass(frozen=True)
class TaskState:
    container_id: str
    pid: int
    status: str
    """`created`, `running`, `stopped`, `paused`, `pausing` or `unknown`."""
    exit_status: int
    exited_at_ns: int


@dataclass(frozen=True)
class MetricSample:
    """One task's cgroup metrics as containerd sends them (decoded by the caller)."""

    container_id: str
    timestamp_ns: int
    type_url: str
    value: bytes


@dataclass(frozen=True)
class TaskExitInfo:
    pid: int
    exit_status: int
    exited_at_ns: int


def _state(p: task_pb2.Process) -> TaskState:
    return TaskState(
        p.container_id or p.id,
        p.pid,
        _STATUS.get(p.status, "unknown"),
        p.exit_status,
        p.exited_at.ToNanoseconds(),
    )


class TasksService:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._stub = tasks_pb2_grpc.TasksStub(channel.grpc)

    async def create(
        self,
        container_id: str,
        rootfs: Sequence[Mount],
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        runtime_path: str = "",
        options: any_pb2.Any | None = None,
    ) -> int:
        """Create the task (the shim starts; the process is not running yet); its pid.
        `options` replace the container's runtime options for this task (a restore's)."""
        resp = await self._channel.unary(
            self._stub.Create,
            tasks_pb2.CreateTaskRequest(
                container_id=container_id,
                rootfs=[m.to_proto() for m in rootfs],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                terminal=terminal,
                runtime_path=runtime_path,
                options=options,
            ),
            operation=f"create task {container_id}",
            timeout=None,
        )
        return resp.pid

    async def start(self, container_id: str, exec_id: str = "") -> int:
        """Start the task's process (or the exec process `exec_id`); its pid."""
        resp = await self._channel.unary(
            self._stub.Start,
            tasks_pb2.StartRequest(container_id=container_id, exec_id=exec_id),
            operation=f"start task {container_id} {exec_id}".rstrip(),
        )
        return resp.pid

    async def kill(
        self, container_id: str, signal: int, *, all_processes: bool = False, exec_id: str = ""
    ) -> None:
        await self._channel.unary(
            self._stub.Kill,
            tasks_pb2.KillRequest(
                container_id=container_id, signal=signal, all=all_processes, exec_id=exec_id
            ),
            operation=f"kill task {container_id} {exec_id}".rstrip(),
        )

    async def exec(
        self,
        container_id: str,
        exec_id: str,
        process: dict[str, Any],
        *,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        """Add a process (an OCI `process` object) to the running task; start it after."""
        await self._channel.unary(
            self._stub.Exec,
            tasks_pb2.ExecProcessRequest(
                container_id=container_id,
                exec_id=exec_id,
                spec=any_pb2.Any(type_url=_PROCESS_TYPE_URL, value=json.dumps(process).encode()),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                terminal=terminal,
            ),
            operation=f"exec in task {container_id}",
        )

    async def close_io(self, container_id: str, exec_id: str = "") -> None:
        """Close the process's stdin (its EOF); the shim closes its end of the stdin FIFO."""
        await self._channel.unary(
            self._stub.CloseIO,
            tasks_pb2.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True),
            operation=f"close the stdin of {container_id} {exec_id}".rstrip(),
        )

    async def resize_pty(self, container_id: str, exec_id: str, width: int, height: int) -> None:
        await self._channel.unary(
            self._stub.ResizePty,
            tasks_pb2.ResizePtyRequest(
                container_id=container_id, exec_id=exec_id, width=width, height=height
            ),
            operation=f"resize the terminal of {container_id} {exec_id}".rstrip(),
        )

    async def delete_process(self, container_id: str, exec_id: str) -> TaskExitInfo | None:
        try:
            resp = await self._channel.unary(
                self._stub.DeleteProcess,
                tasks_pb2.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
                operation=f"delete exec {exec_id} of {container_id}",
            )
        except NotFound:
            return None
        return TaskExitInfo(resp.pid, resp.exit_status, resp.exited_at.ToNanoseconds())

    async def checkpoint(
        self, container_id: str, options: any_pb2.Any, timeout: float | None
    ) -> None:
        """Dump the task's processes with CRIU where `options` says (runc's
        CheckpointOptions with an `image_path`: containerd then writes nothing to its
        content store); DeadlineExceeded after `timeout` seconds."""
        await self._channel.unary(
            self._stub.Checkpoint,
            tasks_pb2.CheckpointTaskRequest(container_id=container_id, options=options),
            operation=f"checkpoint task {container_id}",
            timeout=timeout,
        )

    async def pause(self, container_id: str) -> None:
        await self._channel.unary(
            self._stub.Pause,
            tasks_pb2.PauseTaskRequest(container_id=container_id),
            operation=f"pause task {container_id}",
        )

    async def resume(self, container_id: str) -> None:
        await self._channel.unary(
            self._stub.Resume,
            tasks_pb2.ResumeTaskRequest(container_id=container_id),
            operation=f"resume task {container_id}",
        )

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply new `linux.resources` (an OCI LinuxResources object) to the running task."""
        await self._channel.unary(
            self._stub.Update,
            tasks_pb2.UpdateTaskRequest(
                container_id=container_id,
                resources=any_pb2.Any(
                    type_url=_RESOURCES_TYPE_URL, value=json.dumps(resources).encode()
                ),
            ),
            operation=f"update task {container_id}",
        )

    async def metrics(
        self, container_ids: Sequence[str], timeout: float = DEFAULT_TIMEOUT
    ) -> builtins.list[MetricSample]:
        """cgroup metrics of these tasks in one call (all tasks when empty)."""
        filters = [f"id=={cid}" for cid in container_ids]
        resp = await self._channel.unary(
            self._stub.Metrics,
            tasks_pb2.MetricsRequest(filters=filters),
            operation="task metrics",
            timeout=timeout,
        )
        return [
            MetricSample(m.id, m.timestamp.ToNanoseconds(), m.data.type_url, m.data.value)
            for m in resp.metrics
        ]

    async def get(self, container_id: str) -> TaskState | None:
        try:
            resp = await self._channel.unary(
                self._stub.Get,
                tasks_pb2.GetRequest(container_id=container_id),
                operation=f"get task {container_id}",
            )
        except NotFound:
            return None
        return _state(resp.process)

    async def list(self) -> builtins.list[TaskState]:
        resp = await self._channel.unary(
            self._stub.List, tasks_pb2.ListTasksRequest(), operation="list tasks"
        )
        return [_state(p) for p in resp.tasks]

    async def wait(
        self, container_id: str, exec_id: str = "", timeout: float | None = None
    ) -> TaskExitInfo:
        """The process's exit; DeadlineExceeded after `timeout` seconds (None: no limit).

        The limit is gRPC's own deadline: cancelling a grpc.aio call from an anyio cancel
        scope surfaces as a foreign CancelledError that escapes the scope.
        """
        resp = await self._channel.unary(
            self._stub.Wait,
            tasks_pb2.WaitRequest(container_id=container_id, exec_id=exec_id),
            operation=f"wait for task {container_id} {exec_id}".rstrip(),
            timeout=timeout,
        )
        return TaskExitInfo(0, resp.exit_status, resp.exited_at.ToNanoseconds())

    async def delete(self, container_id: str) -> TaskExitInfo | None:
        """Delete a stopped (or never started) task; None when there is none."""
        try:
            resp = await self._channel.unary(
                self._stub.Delete,
                tasks_pb2.DeleteTaskRequest(container_id=container_id),
                operation=f"delete task {container_id}",
            )
        except NotFound:
            return None
        return TaskExitInfo(resp.pid, resp.exit_status, resp.exited_at.ToNanoseconds())

    async def kill_and_delete(
        self, container_id: str, wait: float, *, running: bool = False
    ) -> TaskExitInfo | None:
        """Kill the task (every process) if it is alive, wait up to `wait` seconds for its
        exit, and delete it; its exit, or None when there is no task (any more).

        `running`: the caller's state says the task runs, so its status is not asked for
        first (one round trip fewer); one that exited meanwhile is deleted all the same.
        """
        if not running:
            state = await self.get(container_id)
            if state is None:
                return None
            running = state.status in _ALIVE
        if running:
            try:
                await self.kill(container_id, signal.SIGKILL, all_processes=True)
            except NotFound:  # no task, or its process finished: delete what is left
                return await self.delete(container_id)
            with contextlib.suppress(DeadlineExceeded):
                await self.wait(container_id, timeout=wait)
        return await self.delete(container_id)
