"""The sandbox domain service: run, stop, remove, status and list pods; recovery.

RunPodSandbox creates the netns first, then runs CNI ADD beside the pause container's
snapshot, record and task (the task needs the netns, not the CNI result). Every step
registers its undo; any failure runs the undos, so nothing is left behind. The setup runs
in the service's own task group: a kubelet whose call times out and retries gets the same
sandbox instead of an error, and never a second one.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from criproxy import records
from criproxy.containerd import ContainerRecord, RuncOptions
from criproxy.errors import (
    AlreadyExists,
    CriproxyError,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    unwrap,
)
from criproxy.network.cni import (
    Cni,
    CniRequest,
    CniResult,
    DnsConfig,
    PortMapping,
    parse_bandwidth_annotations,
)
from criproxy.network.netns import (
    create_netns,
    create_userns_netns,
    remove_netns,
    remove_pin,
    unpin_netns,
)
from criproxy.sandbox import files, idmap
from criproxy.sandbox.loop import PodLoop
from criproxy.sandbox.model import (
    EXTENSION,
    KIND_LABEL,
    PodConfig,
    Sandbox,
)
from criproxy.sandbox.spec import build_spec
from criproxy.stats import cgroupfs

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from criproxy.config import Config, RuntimeHandler
    from criproxy.containerd import Containerd, Event, Mount, TaskExitInfo, TaskState
    from criproxy.images.service import ImageService
    from criproxy.oci.spec import IdMapping

log = structlog.get_logger("criproxy.sandbox")

Undo = Callable[[], Awaitable[None]]
PodHook = Callable[[str], Awaitable[None]]
"""Called with a pod's id before the pod stops or goes (its containers stop and go first)."""
STOP_TIMEOUT = 10.0
RECONCILE_INTERVAL = 60.0
_SETUP_LEASE = datetime.timedelta(hours=1)
_STATE_MOUNTS = ("shm", "userns")
"""What criproxy mounts in a sandbox's state dir."""


@dataclass
class _Reservation:
    """A pod name taken by one sandbox, from the first RunPodSandbox on."""

    id: str
    done: anyio.Event = field(default_factory=anyio.Event)
    error: CriproxyError | None = None
    delivered: bool = False
    """Whether a RunPodSandbox call returned this id; until then a retry gets it too."""


class SandboxService:
    def __init__(self, config: Config, containerd: Containerd, images: ImageService) -> None:
        self._config = config
        self._containerd = containerd
        self._images = images
        self._cni = Cni(config.cni.conf_dir, config.cni.bin_dirs)
        self._sandboxes: dict[str, Sandbox] = {}
        self._reservations: dict[str, _Reservation] = {}
        self._loops: dict[str, PodLoop] = {}
        self._tasks_deleted: set[str] = set()
        """Pods whose pause task a stop deleted (its remove need not look for it again)."""
        self._tg: TaskGroup | None = None
        self._stop_hooks: list[PodHook] = []
        self._remove_hooks: list[PodHook] = []
        self._sweep_hooks: list[Callable[[Mapping[str, TaskState]], None]] = []
        self._started = anyio.Event()
        self._recovered = anyio.Event()
        self.netns_dir = config.state / "netns"
        self.state_dir = config.state / "sandboxes"
        self.files_root = config.root / "sandboxes"
        self.idmap_root = config.state / "idmap"
        """Idmapped rootfs layers of pods with a user namespace (pods' and containers')."""

    # --- the owner of background work ------------------------------------------------

    async def run(self) -> None:
        """Owns pod setups and pod loops; runs until cancelled (server shutdown).

        Every RECONCILE_INTERVAL it also compares each pod with its pause task, so that an
        exit whose event was lost (between a recovery and the live subscription) is seen;
        the same task listing goes to the `on_sweep` hooks (the containers).
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._started.set()
            while True:
                await anyio.sleep(RECONCILE_INTERVAL)
                if self._recovered.is_set():
                    await self._reconcile_all()

    async def _reconcile_all(self) -> None:
        try:
            tasks = {t.container_id: t for t in await self._containerd.tasks.list()}
        except CriproxyError as err:
            log.debug("periodic reconcile skipped", error=err.message)
            return
        for sandbox_id, sandbox in list(self._sandboxes.items()):
            task = tasks.get(sandbox_id)
            if sandbox.state == "ready" and (task is None or task.status != "running"):
                self._loop(sandbox_id).post(functools.partial(self._reconcile, sandbox_id))
        for hook in self._sweep_hooks:
            hook(tasks)

    async def _task_group(self) -> TaskGroup:
        await self._started.wait()
        assert self._tg is not None
        return self._tg

    def _loop(self, sandbox_id: str) -> PodLoop:
        loop = self._loops.get(sandbox_id)
        if loop is None:
            loop = PodLoop(sandbox_id)
            self._loops[sandbox_id] = loop
            assert self._tg is not None
            self._tg.start_soon(loop.run)
        return loop

    def on_stop(self, hook: PodHook) -> None:
        self._stop_hooks.append(hook)

    def on_remove(self, hook: PodHook) -> None:
        self._remove_hooks.append(hook)

    def on_sweep(self, hook: Callable[[Mapping[str, TaskState]], None]) -> None:
        """Also hand every periodic task listing to `hook` (one tasks.List serves all)."""
        self._sweep_hooks.append(hook)

    async def in_pod_loop(self, sandbox_id: str, job: Callable[[], Awaitable[Any]]) -> Any:
        """Run `job` in the pod's loop, serialised with every other change of the pod."""
        if sandbox_id not in self._sandboxes:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return await self._loop(sandbox_id).call(job)

    def post_to_pod(self, sandbox_id: str, job: Callable[[], Awaitable[Any]]) -> None:
        """Queue `job` in the pod's loop without waiting (containerd events)."""
        if sandbox_id in self._sandboxes:
            self._loop(sandbox_id).post(job)

    # --- queries (memory only: never wait on containerd or CNI) --------------------

    def resolve(self, sandbox_id: str) -> Sandbox | None:
        """A sandbox by full id or unique id prefix."""
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        self._require_recovered()
        return records.by_id_or_prefix(self._sandboxes, sandbox_id, "pod sandbox")

    def get(self, sandbox_id: str) -> Sandbox:
        return records.required(self.resolve(sandbox_id), "pod sandbox", sandbox_id)

    def pods_if_ready(self) -> list[Sandbox]:
        """Every pod, or none before the first recovery (background work)."""
        return list(self._sandboxes.values()) if self._recovered.is_set() else []

    def pods(self) -> list[Sandbox]:
        self._require_recovered()
        return [s for s in self._sandboxes.values() if s.state != "creating"]

    # --- run ---------------------------------------------------------------------

    def handler(self, name: str) -> RuntimeHandler:
        chosen = name or self._config.default_runtime_name
        handler = self._config.runtimes.get(chosen)
        if handler is None:
            known = ", ".join(sorted(self._config.runtimes))
            raise InvalidArgument(f"unknown runtime handler {name!r} (configured: {known})")
        return handler

    def _require_recovered(self) -> None:
        """Until the first recovery, memory is not the truth: answering from it would make
        the kubelet think pods are gone, and a retried name would get a second pod."""
        if not self._recovered.is_set():
            raise Unavailable("criproxy is still loading the pods from containerd; retry shortly")

    async def run_pod(self, pod: PodConfig, runtime_handler: str) -> str:
        handler = self.handler(runtime_handler)
        self._require_recovered()
        tg = await self._task_group()
        key = pod.metadata.reservation
        existing = self._reservations.get(key)
        if existing is not None:
            if not existing.done.is_set():
                await existing.done.wait()  # a retry of a call still being set up
                if existing.error is not None:
                    raise existing.error
                existing.delivered = True
                return existing.id
            if not existing.delivered and existing.error is None:
                existing.delivered = True  # the first caller went away before the answer
                return existing.id
            raise AlreadyExists(
                f"pod sandbox name {key!r} is already reserved for sandbox {existing.id}"
            )
        reservation = _Reservation(secrets.token_hex(32))
        self._reservations[key] = reservation
        tg.start_soon(self._create, reservation, pod, handler, runtime_handler)
        await reservation.done.wait()
        if reservation.error is not None:
            raise reservation.error
        reservation.delivered = True
        return reservation.id

    async def _create(
        self, reservation: _Reservation, pod: PodConfig, handler: RuntimeHandler, requested: str
    ) -> None:
        sandbox_id = reservation.id
        bound = log.bind(sandbox=sandbox_id, pod=f"{pod.metadata.namespace}/{pod.metadata.name}")
        undos: list[Undo] = []
        started = time.monotonic()
        try:
            sandbox = await self._setup(sandbox_id, pod, handler, undos, requested=requested)
            self._sandboxes[sandbox_id] = sandbox
            # An exit before the pod was registered was not routed to it: look once more.
            self._loop(sandbox_id).post(functools.partial(self._reconcile, sandbox_id))
            bound.info(
                "pod sandbox ready", ip=sandbox.ip, seconds=round(time.monotonic() - started, 3)
            )
        except BaseException as err:
            with anyio.CancelScope(shield=True):
                for undo in reversed(undos):
                    try:
                        await undo()
                    except Exception as undo_err:  # keep undoing the rest
                        bound.warning("clean-up step failed", error=str(undo_err))
            self._reservations.pop(pod.metadata.reservation, None)
            leaf = unwrap(err)
            reservation.error = (
                leaf if isinstance(leaf, CriproxyError) else Internal(f"pod setup failed: {leaf!r}")
            )
            bound.warning("pod sandbox setup failed", error=str(reservation.error))
            if not isinstance(err, Exception):
                raise
        finally:
            reservation.done.set()

    async def _setup(
        self,
        sandbox_id: str,
        pod: PodConfig,
        handler: RuntimeHandler,
        undos: list[Undo],
        *,
        requested: str,
    ) -> Sandbox:
        # Under a lease until the container record references the snapshot: containerd's
        # GC (which runs after enough mutations) collects an unreferenced fresh snapshot.
        async with self._containerd.leased(
            "criproxy-sandbox", _SETUP_LEASE, release_in=self._tg
        ) as cd:
            return await self._setup_leased(
                cd, sandbox_id, pod, handler, undos, requested=requested
            )

    async def _setup_leased(
        self,
        cd: Containerd,
        sandbox_id: str,
        pod: PodConfig,
        handler: RuntimeHandler,
        undos: list[Undo],
        *,
        requested: str,
    ) -> Sandbox:
        image = await self._images.ensure_sandbox_image()
        snapshotter = self._config.containerd.snapshotter
        state_dir = self.state_dir / sandbox_id
        files_dir = self.files_root / sandbox_id
        undos.append(lambda: anyio.to_thread.run_sync(files.remove_dir, state_dir, _STATE_MOUNTS))
        undos.append(lambda: anyio.to_thread.run_sync(files.remove_dir, files_dir))
        mounts: list[Mount] = []
        hostname = files.pod_hostname(pod.hostname, pod.host_network)
        netns = userns = ""
        shm = str(state_dir / "shm") if pod.ipc != "node" else ""

        async def snapshot() -> None:
            mounts.extend(
                await cd.snapshots.prepare(snapshotter, sandbox_id, image.content.chain_id)
            )
            undos.append(lambda: cd.snapshots.remove(snapshotter, sandbox_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(snapshot)  # needs only the image; overlaps the host-side steps
            netns, userns = await self._namespaces(sandbox_id, pod, state_dir, undos)
            sandbox = Sandbox(
                id=sandbox_id,
                config=pod,
                runtime_handler=requested,  # as asked, "" for the default (as containerd)
                image=self._images.sandbox_image,
                created_at_ns=time.time_ns(),
                netns=netns,
                files_dir=str(files_dir),
                shm=shm,
                userns=userns,
            )
            created = sandbox.to_json()
            await anyio.to_thread.run_sync(_host_side, sandbox, state_dir, hostname, created)
        if userns and pod.security.userns is not None:
            idmap_dir = self.idmap_root / sandbox_id
            undos.append(lambda: anyio.to_thread.run_sync(idmap.release, idmap_dir))
            mounts[:] = await anyio.to_thread.run_sync(
                idmap.idmapped_rootfs,
                mounts,
                userns,
                idmap_dir,
                pod.security.userns,
            )
        spec = await anyio.to_thread.run_sync(
            build_spec, sandbox, image.content.config, self._config
        )
        cni_request = self._cni_request(sandbox)
        results: list[CniResult] = []
        pids: list[int] = []

        async def network() -> None:
            if pod.host_network:
                return
            result = await self._cni.setup(cni_request)
            undos.append(lambda: self._cni.teardown(cni_request, result.raw))
            results.append(result)

        async def container() -> None:
            record = ContainerRecord(
                id=sandbox_id,
                labels={KIND_LABEL: "sandbox", **cri_labels(pod)},
                image=self._images.sandbox_image,
                runtime=handler.runtime_type,
                runtime_options=runc_options(handler, self._config.cgroup_driver),
                spec=spec,
                snapshotter=snapshotter,
                snapshot_key=sandbox_id,
                extensions={EXTENSION: created},
            )
            await cd.containers.create(record)
            undos.append(lambda: self._delete_record(sandbox_id))
            undos.append(self._undo_task(sandbox_id))  # before: a cancelled create may still land
            await cd.tasks.create(sandbox_id, mounts, runtime_path=handler.runtime_path)
            pids.append(await cd.tasks.start(sandbox_id))

        if _names_an_interface(pod.sysctls):
            # runc applies eth0's sysctls when the task starts: eth0 must exist by then.
            await network()
            await container()
        else:
            async with anyio.create_task_group() as tg:
                tg.start_soon(network)
                tg.start_soon(container)

        return await self._finish(sandbox, results[0] if results else None, pids[0])

    async def _namespaces(
        self, sandbox_id: str, pod: PodConfig, state_dir: Path, undos: list[Undo]
    ) -> tuple[str, str]:
        """The pod's pinned netns (none with the host network) and user namespace (only for
        a pod with one of its own, which then owns the netns)."""
        if pod.security.userns is not None:
            userns = state_dir / "userns"
            netns = await create_userns_netns(
                self.netns_dir,
                sandbox_id,
                userns,
                _id_map(pod.security.userns.uids),
                _id_map(pod.security.userns.gids),
            )
            undos.append(lambda: remove_netns(netns))
            undos.append(lambda: remove_pin(userns))
            return str(netns), str(userns)
        if pod.host_network:
            return "", ""
        netns = await create_netns(self.netns_dir, sandbox_id)
        undos.append(lambda: remove_netns(netns))
        return str(netns), ""

    async def _finish(self, sandbox: Sandbox, result: CniResult | None, pid: int) -> Sandbox:
        """The pod's IP into its hosts file, and the ready sandbox into containerd."""
        pod = sandbox.config
        ip = result.primary_ip() if result else ""
        if ip:
            hostname = files.pod_hostname(pod.hostname, pod.host_network)
            await anyio.to_thread.run_sync(
                lambda: files.write_files(
                    Path(sandbox.files_dir), hosts=files.hosts_file(pod.host_network, ip, hostname)
                )
            )
        ready = sandbox.with_changes(
            state="ready",
            ip=ip,
            additional_ips=result.additional_ips() if result else (),
            cni_result=result.raw if result else None,
            pid=pid,
        )
        await self._persist(ready)
        return ready

    def _cni_request(self, sandbox: Sandbox) -> CniRequest:
        pod = sandbox.config
        meta = pod.metadata
        return CniRequest(
            container_id=sandbox.id,
            netns=sandbox.netns,
            args={
                "IgnoreUnknown": "1",
                "K8S_POD_NAMESPACE": meta.namespace,
                "K8S_POD_NAME": meta.name,
                "K8S_POD_INFRA_CONTAINER_ID": sandbox.id,
                "K8S_POD_UID": meta.uid,
            },
            port_mappings=tuple(
                PortMapping(p.host_port, p.container_port, p.protocol, p.host_ip)
                for p in pod.port_mappings
                if p.host_port > 0
            ),
            bandwidth=parse_bandwidth_annotations(pod.annotations),
            dns=DnsConfig(pod.dns.servers, pod.dns.searches, pod.dns.options) if pod.dns else None,
            loopback=False,  # criproxy's netns creation brings lo up
        )

    async def _persist(self, sandbox: Sandbox) -> None:
        await self._containerd.containers.set_extensions(sandbox.id, {EXTENSION: sandbox.to_json()})

    async def _delete_record(self, sandbox_id: str) -> None:
        await self._containerd.containers.delete(sandbox_id)

    def _undo_task(self, sandbox_id: str) -> Undo:
        async def undo() -> None:
            await self._delete_task(sandbox_id)

        return undo

    async def _delete_task(self, sandbox_id: str) -> TaskExitInfo | None:
        """Kill (if running) and delete the pause task; its exit, or None without a task."""
        tasks = self._containerd.tasks
        state = await tasks.get(sandbox_id)
        if state is None:
            return None
        if state.status in ("running", "paused", "pausing"):
            try:
                await tasks.kill(sandbox_id, signal.SIGKILL, all_processes=True)
            except NotFound:
                return None
            with contextlib.suppress(DeadlineExceeded):
                await tasks.wait(sandbox_id, timeout=STOP_TIMEOUT)
        return await tasks.delete(sandbox_id)

    # --- stop and remove -------------------------------------------------------------

    async def stop_pod(self, sandbox_id: str) -> None:
        """Stop the pod: kill the pause task beside CNI DEL; idempotent, also for unknown ids."""
        sandbox = self.resolve(sandbox_id)
        if sandbox is None:
            return
        for hook in self._stop_hooks:
            await hook(sandbox.id)
        await self._loop(sandbox.id).call(lambda: self._stop(sandbox.id))

    async def _stop(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        if (
            sandbox.state == "notready"
            and not sandbox.netns
            and sandbox.cni_result is None
            and sandbox.pid == 0
        ):
            return  # already stopped and torn down
        exit_info: list[tuple[int, int]] = []

        async def kill() -> None:
            exited = await self._delete_task(sandbox.id)
            self._tasks_deleted.add(sandbox.id)
            if exited is not None:
                exit_info.append((exited.exit_status, exited.exited_at_ns or time.time_ns()))

        async def network() -> None:
            torn_down = not sandbox.netns and sandbox.cni_result is None
            if not sandbox.config.host_network and not torn_down:
                await self._cni.teardown(self._cni_request(sandbox), sandbox.cni_result)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill)
            tg.start_soon(network)
        if sandbox.netns:
            await remove_netns(Path(sandbox.netns))
        changes: dict[str, object] = {
            "state": "notready",
            "netns": "",
            "pid": 0,
            "cni_result": None,
        }
        if exit_info and not sandbox.exited_at_ns:
            changes["exit_code"], changes["exited_at_ns"] = exit_info[0]
        updated = sandbox.with_changes(**changes)
        await self._persist(updated)
        self._sandboxes[sandbox_id] = updated
        log.info("pod sandbox stopped", sandbox=sandbox_id)

    async def remove_pod(self, sandbox_id: str) -> None:
        """Remove the pod and everything of it; idempotent, also for unknown ids."""
        sandbox = self.resolve(sandbox_id)
        if sandbox is None:
            return
        for hook in (*self._stop_hooks, *self._remove_hooks):
            await hook(sandbox.id)
        loop = self._loop(sandbox.id)
        try:
            await loop.call(lambda: self._stop(sandbox.id))
            await loop.call(lambda: self._remove(sandbox.id))
        except anyio.ClosedResourceError:
            pass  # a concurrent RemovePodSandbox finished it
        finally:
            if sandbox.id not in self._sandboxes and self._loops.get(sandbox.id) is loop:
                self._loops.pop(sandbox.id).close()

    async def _remove(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None:
            return
        if sandbox_id not in self._tasks_deleted:
            await self._delete_task(sandbox_id)
        await self._containerd.containers.delete(sandbox_id)
        self._tasks_deleted.discard(sandbox_id)
        await self._containerd.snapshots.remove(self._config.containerd.snapshotter, sandbox_id)

        def remove_files() -> None:  # one worker-thread hop for the blocking file work
            idmap.release(self.idmap_root / sandbox_id)
            files.remove_dir(self.state_dir / sandbox_id, _STATE_MOUNTS)
            files.remove_dir(self.files_root / sandbox_id)
            unpin_netns(self.netns_dir / sandbox_id)

        await anyio.to_thread.run_sync(remove_files)
        self._sandboxes.pop(sandbox_id, None)
        self._reservations.pop(sandbox.config.metadata.reservation, None)
        loop = self._loops.pop(sandbox_id, None)
        if loop is not None:
            loop.close()  # ends the loop after this job
        log.info("pod sandbox removed", sandbox=sandbox_id)

    async def update_resources(
        self,
        sandbox_id: str,
        overhead: dict[str, object] | None,
        resources: dict[str, object] | None,
    ) -> None:
        """Record the pod's new overhead and resources and apply them to the pod's cgroup
        (its cgroup_parent; a pod without one has none of its own). The kubelet has usually
        sized that cgroup already; writing the same values again is harmless."""
        sandbox = self.get(sandbox_id)

        async def update() -> None:
            current = self._sandboxes.get(sandbox.id)
            if current is None:
                raise NotFound(f"pod sandbox {sandbox_id!r} not found")
            parent = current.config.cgroup_parent
            if resources and parent and current.state == "ready":
                try:
                    await anyio.to_thread.run_sync(
                        cgroupfs.apply_pod_limits,
                        parent,
                        self._config.cgroup_driver == "systemd",
                        resources,
                    )
                except OSError as err:
                    raise FailedPrecondition(
                        f"cannot apply resources to the cgroup {parent!r} of pod {sandbox.id}: "
                        f"{err.strerror or err}"
                    ) from None
            updated = current.with_changes(overhead=overhead, resources=resources)
            await self._persist(updated)
            self._sandboxes[sandbox.id] = updated

        await self._loop(sandbox.id).call(update)

    # --- events and recovery -----------------------------------------------------

    async def on_event(self, event: Event) -> None:
        from criproxy.containerd import TaskEvent

        payload = event.payload
        if not isinstance(payload, TaskEvent) or payload.action != "exit":
            return
        if payload.container_id not in self._sandboxes or not payload.main_process:
            return
        self._loop(payload.container_id).post(
            lambda: self._exited(payload.container_id, payload.exit_status, payload.exited_at_ns)
        )

    async def _exited(self, sandbox_id: str, exit_code: int, exited_at_ns: int) -> None:
        """The pause process died: the pod is NOTREADY until the kubelet stops it."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state == "notready":
            return
        updated = sandbox.with_changes(
            state="notready", exit_code=exit_code, exited_at_ns=exited_at_ns or time.time_ns()
        )
        self._sandboxes[sandbox_id] = updated
        await self._persist(updated)
        log.warning("pod sandbox exited", sandbox=sandbox_id, exit_code=exit_code)

    async def recover(self) -> None:
        """At start: rebuild every sandbox from containerd's records, then clean up what a
        killed criproxy left without a record. After a reconnect: reconcile each known pod
        in its own loop (memory is current; only task states may have drifted)."""
        await self._task_group()
        if self._recovered.is_set():
            for sandbox_id in list(self._sandboxes):
                self._loop(sandbox_id).post(functools.partial(self._reconcile, sandbox_id))
            log.info("pods queued for reconciliation", sandboxes=len(self._sandboxes))
            return
        records = await self._containerd.containers.list(f'labels."{KIND_LABEL}"==sandbox')
        tasks = {t.container_id: t for t in await self._containerd.tasks.list()}
        seen = {record.id for record in records}  # unreadable ones too: never orphans
        for record in records:
            raw = record.extensions.get(EXTENSION)
            if raw is None:
                continue
            try:
                sandbox = Sandbox.from_json(raw)
            except (ValueError, TypeError, KeyError) as err:
                log.warning("sandbox record unreadable", sandbox=record.id, error=str(err))
                continue
            try:
                sandbox = await self._repaired(sandbox, tasks.get(sandbox.id))
            except CriproxyError as err:
                log.warning("sandbox state not saved", sandbox=sandbox.id, error=err.message)
            self._sandboxes[sandbox.id] = sandbox
            key = sandbox.config.metadata.reservation
            self._reservations.setdefault(key, _Reservation(sandbox.id, delivered=True)).done.set()
            self._loop(sandbox.id)
        await self._clean_orphans(seen)
        self._recovered.set()
        log.info("sandboxes recovered", sandboxes=len(self._sandboxes))

    async def _repaired(self, sandbox: Sandbox, task: TaskState | None) -> Sandbox:
        """The sandbox with its pause task's real state; saved when that differs."""
        half_made = sandbox.state == "creating"  # criproxy died during RunPodSandbox
        dead = sandbox.state == "ready" and (task is None or task.status != "running")
        if not (half_made or dead):
            return sandbox
        repaired = sandbox.with_changes(
            state="notready",
            exit_code=task.exit_status if task else sandbox.exit_code,
            exited_at_ns=(task.exited_at_ns if task else 0) or time.time_ns(),
        )
        log.warning("pod sandbox found not running", sandbox=sandbox.id)
        await self._persist(repaired)
        return repaired

    async def _reconcile(self, sandbox_id: str) -> None:
        """In the pod's loop: compare the pod with its pause task and repair drift."""
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or sandbox.state != "ready":
            return
        task = await self._containerd.tasks.get(sandbox_id)
        repaired = await self._repaired(sandbox, task)
        self._sandboxes[sandbox_id] = repaired

    async def _clean_orphans(self, known: set[str]) -> None:
        """What a criproxy killed early in RunPodSandbox left with no record: the netns pin
        (after CNI DEL, which releases the IP), and the pod's directories."""
        in_flight = {r.id for r in self._reservations.values() if not r.done.is_set()}

        def leftovers(directory: Path) -> list[str]:
            try:
                return [n for n in os.listdir(directory) if n not in known | in_flight]
            except FileNotFoundError:
                return []

        for name in await anyio.to_thread.run_sync(leftovers, self.netns_dir):
            path = self.netns_dir / name
            log.warning("cleaning up the netns of a pod that was never recorded", sandbox=name)
            intent = await anyio.to_thread.run_sync(_read_intent, self.state_dir / name)
            request = (
                self._cni_request(intent)
                if intent is not None
                else CniRequest(container_id=name, netns=str(path))
            )
            try:
                await self._cni.teardown(request, None)
            except CriproxyError as err:
                log.warning("CNI DEL of an orphan failed", sandbox=name, error=err.message)
            await remove_netns(path)
        for directory in (self.state_dir, self.files_root):
            for name in await anyio.to_thread.run_sync(leftovers, directory):
                await anyio.to_thread.run_sync(files.remove_dir, directory / name, _STATE_MOUNTS)


_INTENT = "sandbox.json"


def _host_side(sandbox: Sandbox, state_dir: Path, hostname: str, sandbox_json: bytes) -> None:
    """The pod's blocking host-side file work, in one worker-thread hop: its /dev/shm, its
    hostname, hosts and resolv.conf, and the intent record (for a criproxy killed before
    the pause record exists: CNI DEL with the pod's args)."""
    pod = sandbox.config
    if sandbox.shm:
        files.mount_shm(Path(sandbox.shm))
    files.write_files(
        Path(sandbox.files_dir),
        hostname=hostname + "\n",
        hosts=files.hosts_file(pod.host_network, "", hostname),
        resolv_conf=files.resolv_conf(pod.dns),
    )
    _write_intent(state_dir, sandbox_json)


def _write_intent(state_dir: Path, sandbox_json: bytes) -> None:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state_dir / f".{_INTENT}.tmp"
    tmp.write_bytes(sandbox_json)
    tmp.replace(state_dir / _INTENT)


def _read_intent(state_dir: Path) -> Sandbox | None:
    try:
        return Sandbox.from_json((state_dir / _INTENT).read_bytes())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _id_map(mappings: tuple[IdMapping, ...]) -> str:
    """The text of /proc/<pid>/uid_map (or gid_map) for these mappings."""
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in mappings)


def _names_an_interface(sysctls: dict[str, str]) -> bool:
    return any(
        key.replace("/", ".").startswith(("net.ipv4.conf.", "net.ipv6.conf.")) for key in sysctls
    )


def cri_labels(pod: PodConfig) -> dict[str, str]:
    """The pod's labels on every containerd record of it (as containerd's CRI sets them)."""
    return {
        "io.kubernetes.pod.name": pod.metadata.name,
        "io.kubernetes.pod.namespace": pod.metadata.namespace,
        "io.kubernetes.pod.uid": pod.metadata.uid,
    }


def runc_options(handler: RuntimeHandler, cgroup_driver: str) -> RuncOptions | None:
    if handler.runtime_type != "io.containerd.runc.v2":
        return None
    opts = handler.options
    return RuncOptions(
        binary_name=str(opts.get("BinaryName", "")),
        root=str(opts.get("Root", "")),
        systemd_cgroup=bool(opts.get("SystemdCgroup", cgroup_driver == "systemd")),
        no_pivot_root=bool(opts.get("NoPivotRoot", False)),
        no_new_keyring=bool(opts.get("NoNewKeyring", False)),
        shim_cgroup=str(opts.get("ShimCgroup", "")),
    )
