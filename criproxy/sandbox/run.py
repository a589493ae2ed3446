"""RunPodSandbox: the netns first, then CNI ADD beside the pause container's snapshot,
record and task (the task needs the netns, not the CNI result).

Every step pushes its undo; any failure unwinds them, so nothing is left behind. The
set-up runs in the pod loops' task group, not in the caller's: a kubelet whose call
times out and retries gets the same sandbox instead of an error, and never a second one.
"""

from __future__ import annotations

import datetime
import functools
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from criproxy.containerd import ContainerRecord
from criproxy.errors import AlreadyExists, CriproxyError, Internal, unwrap
from criproxy.network.netns import create_netns, create_userns_netns, remove_netns, remove_pin
from criproxy.nri import hooks as nri_hooks
from criproxy.nri.adaptation import PluginError
from criproxy.sandbox import exits, files, idmap
from criproxy.sandbox.deps import STATE_MOUNTS, STOP_TIMEOUT, cni_request
from criproxy.sandbox.handlers import cri_labels, resolve_handler, runc_options
from criproxy.sandbox.model import EXTENSION, KIND_LABEL, Sandbox
from criproxy.sandbox.spec import build_spec
from criproxy.steps import UndoStack, both
from criproxy.store import PodSetup

if TYPE_CHECKING:
    from criproxy.config import RuntimeHandler
    from criproxy.containerd import Containerd, Mount
    from criproxy.network.cni import CniResult
    from criproxy.oci.spec import IdMapping
    from criproxy.sandbox.deps import PodDeps
    from criproxy.sandbox.model import PodConfig

log = structlog.get_logger("criproxy.sandbox")

SETUP_LEASE = datetime.timedelta(hours=1)
INTENT = "sandbox.json"
"""The set-up intent in a pod's state dir: what a criproxy killed before the pause
record exists needs for the CNI DEL of the pod."""


async def run_pod(deps: PodDeps, pod: PodConfig, runtime_handler: str) -> str:
    handler = resolve_handler(deps.config, runtime_handler)
    store = deps.store
    store.gate.require()
    tg = await deps.loops.task_group()
    key = pod.metadata.reservation
    existing_id = store.names.get(key)
    if existing_id is not None:
        existing = store.setups.get(existing_id)
        if existing is None:
            raise AlreadyExists(
                f"pod sandbox name {key!r} is already reserved for sandbox {existing_id}"
            )
        if not existing.done.is_set():
            await existing.done.wait()  # a retry of a call still being set up
        if existing.error is not None:
            raise existing.error
        # The first caller went away before the answer (or is waiting too): deliver it.
        store.setups.pop(existing_id, None)
        return existing.id
    setup = PodSetup(secrets.token_hex(32))
    store.names.reserve(key, setup.id)  # before any await: one pod per name
    store.setups[setup.id] = setup
    tg.start_soon(_create, deps, setup, pod, handler, runtime_handler)
    await setup.done.wait()
    if setup.error is not None:
        raise setup.error
    store.setups.pop(setup.id, None)
    return setup.id


async def _create(
    deps: PodDeps, setup: PodSetup, pod: PodConfig, handler: RuntimeHandler, requested: str
) -> None:
    sandbox_id = setup.id
    bound = log.bind(sandbox=sandbox_id, pod=f"{pod.metadata.namespace}/{pod.metadata.name}")
    undo = UndoStack(bound)
    started = time.monotonic()
    try:
        # Under a lease until the container record references the snapshot: containerd's
        # GC (which runs after enough mutations) collects an unreferenced fresh snapshot.
        async with deps.containerd.leased(
            "criproxy-sandbox", SETUP_LEASE, release_in=await deps.loops.task_group()
        ) as cd:
            sandbox = await _setup(
                deps, cd, sandbox_id, pod, handler=handler, undo=undo, requested=requested
            )
        # An exit before the pod was registered was not routed to it: look once more.
        deps.loops.post(sandbox_id, functools.partial(exits.reconcile, deps, sandbox_id))
        bound.info("pod sandbox ready", ip=sandbox.ip, seconds=round(time.monotonic() - started, 3))
    except BaseException as err:
        await undo.unwind()
        deps.store.names.release(sandbox_id)
        deps.store.setups.pop(sandbox_id, None)
        deps.store.index.pop(sandbox_id)
        leaf = unwrap(err)
        setup.error = (
            leaf if isinstance(leaf, CriproxyError) else Internal(f"pod setup failed: {leaf!r}")
        )
        bound.warning("pod sandbox setup failed", error=str(setup.error))
        if not isinstance(err, Exception):
            raise
    finally:
        setup.done.set()


async def _setup(
    deps: PodDeps,
    cd: Containerd,
    sandbox_id: str,
    pod: PodConfig,
    *,
    handler: RuntimeHandler,
    undo: UndoStack,
    requested: str,
) -> Sandbox:
    paths = deps.paths
    state_dir = paths.state_dir / sandbox_id
    files_dir = paths.files_root / sandbox_id
    undo.push_sync(functools.partial(files.remove_dir, state_dir, STATE_MOUNTS))
    undo.push_sync(functools.partial(files.remove_dir, files_dir))
    hostname = files.pod_hostname(pod.hostname, pod.host_network)
    image = await deps.images.ensure_sandbox_image()

    async def snapshot() -> list[Mount]:
        """Needs only the image; overlaps the host-side steps."""
        snapshotter = deps.config.containerd.snapshotter
        mounts = await cd.snapshots.prepare(snapshotter, sandbox_id, image.content.chain_id)
        undo.push(functools.partial(cd.snapshots.remove, snapshotter, sandbox_id))
        return mounts

    async def host_side() -> Sandbox:
        netns, userns = await _namespaces(deps, sandbox_id, pod, state_dir, undo)
        sandbox = Sandbox(
            id=sandbox_id,
            config=pod,
            runtime_handler=requested,  # as asked, "" for the default (as containerd)
            image=deps.images.sandbox_image,
            created_at_ns=time.time_ns(),
            netns=netns,
            files_dir=str(files_dir),
            shm=str(state_dir / "shm") if pod.ipc != "node" else "",
            userns=userns,
        )
        await anyio.to_thread.run_sync(_host_side, sandbox, state_dir, hostname)
        return sandbox

    mounts, sandbox = await both(snapshot(), host_side())
    if sandbox.userns and pod.security.userns is not None:
        idmap_dir = paths.idmap_root / sandbox_id
        undo.push_sync(functools.partial(idmap.release, idmap_dir))
        mounts = await anyio.to_thread.run_sync(
            idmap.idmapped_rootfs, mounts, sandbox.userns, idmap_dir, pod.security.userns
        )
    spec = await anyio.to_thread.run_sync(build_spec, sandbox, image.content.config, deps.config)

    async def network() -> CniResult | None:
        if pod.host_network:
            return None
        request = cni_request(sandbox)
        result = await deps.cni.setup(request)
        undo.push(functools.partial(deps.cni.teardown, request, result.raw))
        return result

    async def pause() -> int:
        record = ContainerRecord(
            id=sandbox_id,
            labels={KIND_LABEL: "sandbox", **cri_labels(pod)},
            image=deps.images.sandbox_image,
            runtime=handler.runtime_type,
            runtime_options=runc_options(handler, deps.config),
            spec=spec,
            snapshotter=deps.config.containerd.snapshotter,
            snapshot_key=sandbox_id,
            extensions={EXTENSION: sandbox.to_json()},
        )
        await cd.containers.create(record)
        undo.push(functools.partial(deps.containerd.containers.delete, sandbox_id))
        # before the create: a cancelled create may still land
        undo.push(
            functools.partial(deps.containerd.tasks.kill_and_delete, sandbox_id, STOP_TIMEOUT)
        )
        await cd.tasks.create(sandbox_id, mounts, runtime_path=handler.runtime_path)
        return await cd.tasks.start(sandbox_id)

    if _names_an_interface(pod.sysctls):
        # runc applies eth0's sysctls when the task starts: eth0 must exist by then.
        result = await network()
        pid = await pause()
    else:
        result, pid = await both(network(), pause())
    return await _finish(deps, sandbox, result, pid)


async def _namespaces(
    deps: PodDeps, sandbox_id: str, pod: PodConfig, state_dir: Path, undo: UndoStack
) -> tuple[str, str]:
    """The pod's pinned netns (none with the host network) and user namespace (only for
    a pod with one of its own, which then owns the netns)."""
    netns_dir = deps.paths.netns_dir
    if pod.security.userns is not None:
        userns = state_dir / "userns"
        netns = await create_userns_netns(
            netns_dir,
            sandbox_id,
            userns,
            _id_map(pod.security.userns.uids),
            _id_map(pod.security.userns.gids),
        )
        undo.push(functools.partial(remove_netns, netns))
        undo.push(functools.partial(remove_pin, userns))
        return str(netns), str(userns)
    if pod.host_network:
        return "", ""
    netns = await create_netns(netns_dir, sandbox_id)
    undo.push(functools.partial(remove_netns, netns))
    return str(netns), ""


async def _finish(deps: PodDeps, sandbox: Sandbox, result: CniResult | None, pid: int) -> Sandbox:
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
    # NRI's plugins see the pod before anyone else: it is listed only once they agree.
    try:
        if deps.nri.plugins:  # (the message is not built for nobody)
            await deps.nri.run_pod_sandbox(nri_hooks.pod(ready))
    except PluginError as err:
        raise nri_hooks.vetoed(err) from None
    await deps.persist(ready)
    return ready


def _host_side(sandbox: Sandbox, state_dir: Path, hostname: str) -> None:
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
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = state_dir / f".{INTENT}.tmp"
    tmp.write_bytes(sandbox.to_json())
    tmp.replace(state_dir / INTENT)


def read_intent(state_dir: Path) -> Sandbox | None:
    """The intent a set-up left (see INTENT); None when there is none or it is unreadable."""
    try:
        return Sandbox.from_json((state_dir / INTENT).read_bytes())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _id_map(mappings: tuple[IdMapping, ...]) -> str:
    """The text of /proc/<pid>/uid_map (or gid_map) for these mappings."""
    return "".join(f"{m.container_id} {m.host_id} {m.length}\n" for m in mappings)


def _names_an_interface(sysctls: dict[str, str]) -> bool:
    return any(
        key.replace("/", ".").startswith(("net.ipv4.conf.", "net.ipv6.conf.")) for key in sysctls
    )
