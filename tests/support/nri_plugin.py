"""An NRI plugin for the tests, run in a thread of its own: it connects to criproxy's NRI
socket as containerd/nri's plugin stub does (the multiplexer, RegisterPlugin on
connection 2, the Plugin service served on connection 1), records every event it gets and
answers with what the test asks (adjustments, errors, delays)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import grpc

from criproxy._generated.nri import api_pb2 as nri
from criproxy.nri import mux, ttrpc

SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME = "nri.pkg.api.v1alpha1.Runtime"

_REQUESTS: dict[str, tuple[type[Any], type[Any]]] = {
    "RunPodSandbox": (nri.RunPodSandboxRequest, nri.RunPodSandboxResponse),
    "StopPodSandbox": (nri.StopPodSandboxRequest, nri.StopPodSandboxResponse),
    "RemovePodSandbox": (nri.RemovePodSandboxRequest, nri.RemovePodSandboxResponse),
    "CreateContainer": (nri.CreateContainerRequest, nri.CreateContainerResponse),
    "PostCreateContainer": (nri.PostCreateContainerRequest, nri.PostCreateContainerResponse),
    "StartContainer": (nri.StartContainerRequest, nri.StartContainerResponse),
    "PostStartContainer": (nri.PostStartContainerRequest, nri.PostStartContainerResponse),
    "UpdateContainer": (nri.UpdateContainerRequest, nri.UpdateContainerResponse),
    "PostUpdateContainer": (nri.PostUpdateContainerRequest, nri.PostUpdateContainerResponse),
    "UpdatePodSandbox": (nri.UpdatePodSandboxRequest, nri.UpdatePodSandboxResponse),
    "PostUpdatePodSandbox": (nri.PostUpdatePodSandboxRequest, nri.PostUpdatePodSandboxResponse),
    "StopContainer": (nri.StopContainerRequest, nri.StopContainerResponse),
    "ValidateContainerAdjustment": (
        nri.ValidateContainerAdjustmentRequest,
        nri.ValidateContainerAdjustmentResponse,
    ),
    "RemoveContainer": (nri.RemoveContainerRequest, nri.RemoveContainerResponse),
}


@dataclass
class Seen:
    event: str
    pod: str
    container: str
    at: float
    message: Any


@dataclass
class TestPlugin:
    __test__ = False
    socket: Path
    name: str = "test"
    index: str = "10"
    events: int = 0
    """The subscription (0: every event)."""
    answers: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    """Per event, what to answer (a response message); raising TtrpcError fails it."""
    delay: dict[str, float] = field(default_factory=dict)
    """Per event (or "Synchronize"), how long to take before answering."""
    seen: list[Seen] = field(default_factory=list)
    synchronized: threading.Event = field(default_factory=threading.Event)
    synced: nri.SynchronizeRequest | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stop: Callable[[], None] | None = None
    config: str = ""
    """What the runtime's Configure gave (for a pre-installed one: where to record)."""
    _client: ttrpc.Client | None = None
    _token: Any = None

    def start(self, wait: float = 10) -> TestPlugin:
        self._thread = threading.Thread(target=anyio.run, args=(self._run,), daemon=True)
        self._thread.start()
        if not self.synchronized.wait(wait):
            raise TimeoutError(f"plugin {self.name} was not synchronised in {wait}s")
        return self

    def stop(self) -> None:
        if self._stop is not None and not self.closed.is_set():
            self._stop()
        if self._thread is not None:
            self._thread.join(10)

    def update_containers(
        self,
        updates: list[nri.ContainerUpdate],
        evict: list[nri.ContainerEviction] = (),  # type: ignore[assignment]
    ) -> list[nri.ContainerUpdate]:
        """An unsolicited UpdateContainers call to the runtime; the updates that failed."""
        assert self._client is not None
        client = self._client

        async def call() -> list[nri.ContainerUpdate]:
            answer = await client.call(
                RUNTIME,
                "UpdateContainers",
                nri.UpdateContainersRequest(update=updates, evict=list(evict)),
                nri.UpdateContainersResponse,
                30,
            )
            return list(answer.failed)

        return anyio.from_thread.run(call, token=self._token)  # type: ignore[no-any-return]

    def events_of(self, subject: str) -> list[str]:
        return [s.event for s in self.seen if subject in (s.pod, s.container)]

    async def _run(self, conn: socket.socket | None = None) -> None:
        if conn is not None:  # pre-installed: handed its connection by the runtime
            stream: Any = await anyio.abc.UNIXSocketStream.from_socket(conn)
        else:
            stream = await anyio.connect_unix(str(self.socket))
        m = mux.Mux(stream)
        methods = {(SERVICE, name): self._handler(name) for name in _REQUESTS}
        methods[SERVICE, "Configure"] = self._configure
        methods[SERVICE, "Synchronize"] = self._synchronize
        server = ttrpc.Server(m.open(mux.PLUGIN_SERVICE_CONN), methods)
        client = ttrpc.Client(m.open(mux.RUNTIME_SERVICE_CONN))
        try:
            await self._serve(m, server, client)
        finally:
            self.closed.set()  # the multiplexer's run closed the socket

    async def _serve(self, m: mux.Mux, server: ttrpc.Server, client: ttrpc.Client) -> None:
        async with anyio.create_task_group() as tg:
            self._stop = lambda: anyio.from_thread.run_sync(tg.cancel_scope.cancel, token=token)
            token = anyio.lowlevel.current_token()
            self._client, self._token = client, token
            tg.start_soon(m.run)
            tg.start_soon(server.run)
            tg.start_soon(client.run)
            await client.call(
                RUNTIME,
                "RegisterPlugin",
                nri.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.index),
                nri.Empty,
                5,
            )
            await m.done.wait()
            tg.cancel_scope.cancel()

    async def _configure(self, payload: bytes) -> bytes:
        self.config = nri.ConfigureRequest.FromString(payload).config
        return nri.ConfigureResponse(events=self.events).SerializeToString()

    async def _synchronize(self, payload: bytes) -> bytes:
        self.synced = nri.SynchronizeRequest.FromString(payload)
        self._record(
            {
                "event": "Synchronize",
                "pods": [p.id for p in self.synced.pods],
                "containers": [c.id for c in self.synced.containers],
            }
        )
        await anyio.sleep(self.delay.get("Synchronize", 0))
        self.synchronized.set()
        return nri.SynchronizeResponse().SerializeToString()

    def _record(self, entry: dict[str, Any]) -> None:
        """A pre-installed plugin's record of what it got, in the file its config names."""
        if self.config:
            entry["pid"] = os.getpid()
            with open(self.config.strip(), "a") as out:
                out.write(json.dumps(entry) + "\n")

    def _handler(self, name: str) -> Callable[[bytes], Any]:
        request_type, response_type = _REQUESTS[name]

        async def handle(payload: bytes) -> bytes:
            request = request_type.FromString(payload)
            pod = request.pod.id if request.HasField("pod") else ""
            has_container = "container" in request_type.DESCRIPTOR.fields_by_name
            container = request.container.id if has_container else ""
            self.seen.append(Seen(name, pod, container, time.monotonic(), request))
            self._record({"event": name, "pod": pod, "container": container})
            await anyio.sleep(self.delay.get(name, 0))
            answer = self.answers.get(name)
            response = answer(request) if answer is not None else response_type()
            return response.SerializeToString()

        return handle


def refuse(message: str) -> Callable[[Any], Any]:
    """An answer that fails the event."""

    def answer(request: Any) -> Any:
        raise ttrpc.TtrpcError(grpc.StatusCode.UNKNOWN, message)

    return answer


def main() -> None:
    """Run as a pre-installed plugin: the runtime started this process with its end of the
    connection as fd $NRI_PLUGIN_SOCKET; what it gets goes to the file its config names."""
    conn = socket.socket(fileno=int(os.environ["NRI_PLUGIN_SOCKET"]))
    plugin = TestPlugin(Path(), os.environ["NRI_PLUGIN_NAME"], os.environ["NRI_PLUGIN_IDX"])
    anyio.run(plugin._run, conn)


if __name__ == "__main__":
    main()
