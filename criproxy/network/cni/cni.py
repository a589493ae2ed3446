"""Running the plugin chains for one pod (ADD, DEL, CHECK) as containerd's CRI does through
go-cni/libcni.

The runtime side of the CNI spec (1.0.0, and the 0.3.x/0.4.0 configs still in the field) is
small enough to own: exec each plugin with the CNI_* environment and its config on stdin,
feed each result to the next plugin as `prevResult`, and hand the final result back to the
caller, who persists it and gives it back to DEL. libcni's on-disk result cache is not
needed for that and is left out.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog

from criproxy import metrics, tracing
from criproxy.errors import CriproxyError, DeadlineExceeded, FailedPrecondition, Internal
from criproxy.network.cni.config import (
    LOOPBACK,
    Network,
    NetworkNotReady,
    build_plugin_config,
    load_network_config,
    network_of,
    version_tuple,
)
from criproxy.network.cni.plugin import PluginRunner
from criproxy.network.cni.result import (
    CniPluginError,
    CniResult,
    convert_result,
    parse_plugin_error,
    parse_result,
)
from criproxy.network.netns import is_netns

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from structlog.typing import FilteringBoundLogger

    from criproxy.network.cni.request import CniRequest

log = structlog.get_logger("criproxy.network")

_ETXTBSY_RETRIES = 5
Command = Literal["ADD", "DEL", "CHECK"]


@dataclass
class _Progress:
    """What an ADD of one network got to: the last result, for DEL after a failure."""

    result: dict[str, Any] | None = None
    plugin: str = ""


def _benign_del_error(err: CriproxyError, netns: str) -> bool:
    """The DEL failures go-cni's `Remove` ignores: what is gone already is not an error."""
    text = err.message
    return "not found" in text or (not netns and "no such file or directory" in text.lower())


@dataclass(frozen=True)
class _Call:
    """What every plugin of one ADD/DEL/CHECK is run with, beside its own config."""

    request: CniRequest
    netns: str
    ifname: str
    log: FilteringBoundLogger


class Cni:
    """Runs the node's CNI config (plus loopback) for pods; keeps nothing of a pod between calls.

    The config applies anew to every call, so a changed conf dir applies to the next pod, as
    with containerd's config watcher: it is read again whenever the directory or the chosen
    file has changed (their modification times and size), and the plugin binaries are
    looked for each time.
    """

    def __init__(self, conf_dir: str, bin_dirs: tuple[str, ...], timeout: float = 60.0) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = bin_dirs
        self.timeout = timeout
        self._plugins = PluginRunner()
        self._cached: tuple[tuple[int, int, int], Network, Path] | None = None

    async def run(self) -> None:
        """Owns the thread that reaps plugin processes; runs until cancelled (shutdown), then
        reaps what is left and ends that thread. A Cni that is not run still works: it reaps
        each plugin as soon as it has exited."""
        await self._plugins.run()

    async def _load(self) -> Network:
        cached = self._unchanged()
        if cached is not None:
            return cached
        try:
            network, path, stamp = await anyio.to_thread.run_sync(self._read)
        except NetworkNotReady as err:
            raise FailedPrecondition(f"network not ready: {err}") from None
        self._cached = (stamp, network, path)
        return network

    def _read(self) -> tuple[Network, Path, tuple[int, int, int]]:
        """The config and its stamp, taken before reading (a change while reading shows
        at the next call). Blocking."""
        before = os.stat(self.conf_dir).st_mtime_ns if os.path.isdir(self.conf_dir) else 0
        config = load_network_config(self.conf_dir, self.bin_dirs)
        st = config.path.stat()
        return network_of(config), config.path, (before, st.st_mtime_ns, st.st_size)

    def _unchanged(self) -> Network | None:
        """The cached network while neither the directory nor its file changed and its
        plugins are still installed (a few stat calls: no thread hop, no parsing)."""
        if self._cached is None:
            return None
        stamp, network, path = self._cached
        try:
            st = path.stat()
            now = (os.stat(self.conf_dir).st_mtime_ns, st.st_mtime_ns, st.st_size)
        except OSError:
            return None
        if now != stamp:
            return None
        for plugin in network.plugins:
            if not any(os.access(os.path.join(d, plugin["type"]), os.X_OK) for d in self.bin_dirs):
                return None
        return network

    def _find(self, kind: str) -> str:
        for directory in self.bin_dirs:
            path = os.path.join(directory, kind)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise FailedPrecondition(
            f"CNI plugin {kind!r} not found in {os.pathsep.join(self.bin_dirs)}"
        )

    async def _exec(
        self,
        network: Network,
        plugin: Mapping[str, Any],
        command: Command,
        call: _Call,
        prev_result: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Run one plugin; its result for ADD (cniVersion filled in as libcni does)."""
        kind = str(plugin["type"])
        path = self._find(kind)
        conf = build_plugin_config(network, plugin, prev_result, call.request.capability_args())
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": call.request.container_id,
            "CNI_NETNS": call.netns,
            "CNI_IFNAME": call.ifname,
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in call.request.args.items()),
            "CNI_PATH": os.pathsep.join(self.bin_dirs),
        }
        stdin = json.dumps(conf).encode()
        started = time.monotonic()
        for attempt in range(_ETXTBSY_RETRIES + 1):
            try:
                with tracing.client_span(f"cni {command} {kind}", network=network.name) as span:
                    returncode, stdout, stderr = await self._plugins.exec(path, stdin, env)
                    if returncode != 0:
                        tracing.failed(span, f"exit status {returncode}")
                break
            except OSError as err:
                if err.errno == errno.ETXTBSY and attempt < _ETXTBSY_RETRIES:
                    await anyio.sleep(1)  # the binary is being replaced right now; libcni waits
                    continue
                raise CniPluginError(
                    network=network.name, plugin=kind, command=command, code=None, msg=str(err)
                ) from None
        took_ms = round((time.monotonic() - started) * 1000, 1)
        if stderr:
            call.log.debug("cni plugin stderr", plugin=kind, stderr=stderr.decode(errors="replace"))
        if returncode != 0:
            code, msg, details = parse_plugin_error(returncode, stdout, stderr)
            call.log.debug("cni plugin failed", plugin=kind, command=command, ms=took_ms)
            raise CniPluginError(
                network=network.name,
                plugin=kind,
                command=command,
                code=code,
                msg=msg,
                details=details,
            )
        call.log.debug("cni plugin done", plugin=kind, command=command, ms=took_ms)
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise CniPluginError(
                network=network.name,
                plugin=kind,
                command=command,
                code=None,
                msg=f"invalid result {stdout[:500]!r}: {err}",
            ) from None
        if not result.get("cniVersion"):
            result["cniVersion"] = network.version
        return result

    @staticmethod
    def _as_prev(
        network: Network, result: Mapping[str, Any] | None, call: _Call
    ) -> Mapping[str, Any] | None:
        """A result as the prevResult of `network`'s plugins: in the config's version."""
        if result is None or version_tuple(network.version) < (0, 3, 0):
            return result
        try:
            return convert_result(result, network.version)
        except ValueError as err:
            call.log.warning("cni result not convertible; passed as is", error=str(err))
            return result

    async def _add(self, network: Network, call: _Call, progress: _Progress) -> None:
        for plugin in network.plugins:
            progress.plugin = str(plugin["type"])
            prev = self._as_prev(network, progress.result, call)
            progress.result = await self._exec(network, plugin, "ADD", call, prev)
        progress.plugin = ""

    async def _del(
        self,
        network: Network,
        call: _Call,
        prev_result: Mapping[str, Any] | None,
        failures: list[CriproxyError],
    ) -> None:
        """DEL every plugin in reverse order, best effort: one failure does not stop the rest.

        prevResult goes along from CNI 0.4.0 on, as libcni's `DelNetworkList` does."""
        prev = None
        if version_tuple(network.version) >= (0, 4, 0):
            prev = self._as_prev(network, prev_result, call)
        for plugin in reversed(network.plugins):
            try:
                await self._exec(network, plugin, "DEL", call, prev)
            except CriproxyError as err:
                if _benign_del_error(err, call.netns):
                    call.log.info("cni del: already gone", plugin=plugin["type"], error=err.message)
                else:
                    call.log.warning("cni del failed", plugin=plugin["type"], error=err.message)
                    failures.append(err)

    async def setup(self, request: CniRequest) -> CniResult:
        """ADD (see `_setup`), timed for the metrics."""
        with _measured("ADD"):
            return await self._setup(request)

    async def teardown(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """DEL (see `_teardown`), timed for the metrics."""
        with _measured("DEL"):
            await self._teardown(request, prev_result)

    async def check(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """CHECK (see `_check`), timed for the metrics."""
        with _measured("CHECK"):
            await self._check(request, prev_result)

    async def _setup(self, request: CniRequest) -> CniResult:
        """ADD the pod to loopback and to the node's network; return the pod network's result.

        Both networks run concurrently, as go-cni's `Setup` does. On any failure, timeout or
        cancellation, DEL runs for everything (shielded) before the error is raised, so no IP,
        veth or iptables rule is left behind.
        """
        request.validate()
        network = await self._load()
        bound = log.bind(sandbox=request.container_id, network=network.name, netns=request.netns)
        pod = _Call(request, request.netns, request.ifname, bound)
        lo = _Call(request, request.netns, "lo", bound)
        started = time.monotonic()
        chain, loopback = _Progress(), _Progress()
        failures: list[CriproxyError] = []

        async def attach(net: Network, call: _Call, progress: _Progress) -> None:
            try:
                await self._add(net, call, progress)
            except CriproxyError as err:
                failures.append(err)
            except Exception as err:
                bound.exception("cni add crashed", plugin=progress.plugin)
                failures.append(Internal(f"CNI ADD of network {net.name!r} failed: {err!r}"))

        result: CniResult | None = None
        try:
            with anyio.move_on_after(self.timeout) as scope:
                async with anyio.create_task_group() as tg:
                    if request.loopback:
                        tg.start_soon(attach, LOOPBACK, lo, loopback)
                    tg.start_soon(attach, network, pod, chain)
            if scope.cancelled_caught:
                running = chain.plugin or loopback.plugin
                failures.insert(
                    0,
                    DeadlineExceeded(
                        f"CNI ADD of network {network.name!r} did not finish within "
                        f"{self.timeout:g}s (plugin {running!r} was running)"
                    ),
                )
            if not failures and chain.result is not None:
                result = self._result(network, request, chain.result, failures)
        except BaseException:
            await self._undo(network, pod, lo, chain)
            raise
        if failures or result is None:
            await self._undo(network, pod, lo, chain)
            raise failures[0] if failures else Internal("CNI ADD returned no result")
        bound.info(
            "pod network set up",
            ip=result.primary_ip(),
            additional_ips=list(result.additional_ips()),
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return result

    @staticmethod
    def _result(
        network: Network,
        request: CniRequest,
        raw: dict[str, Any],
        failures: list[CriproxyError],
    ) -> CniResult | None:
        try:
            if version_tuple(network.version) >= (0, 3, 0):
                raw = convert_result(raw, network.version)
            result = parse_result(raw, request.ifname)
        except ValueError as err:
            failures.append(Internal(f"CNI network {network.name!r} returned a bad result: {err}"))
            return None
        if not result.pod_ips():
            failures.append(
                Internal(
                    f"CNI network {network.name!r} returned no IP for {request.ifname} "
                    f"of sandbox {request.container_id}"
                )
            )
            return None
        return result

    async def _undo(self, network: Network, pod: _Call, lo: _Call, chain: _Progress) -> None:
        """DEL after a failed ADD: shielded and bounded, errors only logged."""
        pod.log.info("pod network setup failed; deleting what was added")
        failures: list[CriproxyError] = []
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._del, network, pod, chain.result, failures)
                if pod.request.loopback:
                    tg.start_soon(self._del, LOOPBACK, lo, None, failures)
        if scope.cancelled_caught:
            pod.log.warning("cni del after failed add timed out", timeout=self.timeout)

    async def _teardown(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """DEL the pod from the node's network (reverse order) and from loopback.

        A netns that is gone (missing or unmounted pin) becomes CNI_NETNS="", as containerd
        does, so plugins still release IPs and host-side rules. Every plugin is tried; one
        error (the first, or all messages joined) is raised at the end if any truly failed.
        """
        request.validate()
        netns = request.netns
        if netns and not await anyio.to_thread.run_sync(is_netns, Path(netns)):
            netns = ""
        bound = log.bind(sandbox=request.container_id, netns=request.netns)
        started = time.monotonic()
        failures: list[CriproxyError] = []
        network: Network | None = None
        try:
            network = await self._load()
        except FailedPrecondition as err:
            failures.append(err)
        with anyio.move_on_after(self.timeout) as scope:
            async with anyio.create_task_group() as tg:
                if network is not None:
                    bound = bound.bind(network=network.name)
                    pod = _Call(request, netns, request.ifname, bound)
                    tg.start_soon(self._del, network, pod, prev_result, failures)
                if netns and request.loopback:  # lo lives and dies with the netns
                    lo = _Call(request, netns, "lo", bound)
                    tg.start_soon(self._del, LOOPBACK, lo, None, failures)
        if scope.cancelled_caught:
            failures.insert(0, DeadlineExceeded(f"CNI DEL did not finish within {self.timeout:g}s"))
        if failures:
            if len(failures) == 1:
                raise failures[0]
            raise Internal("; ".join(f.message for f in failures))
        bound.info("pod network torn down", ms=round((time.monotonic() - started) * 1000, 1))

    async def _check(self, request: CniRequest, prev_result: Mapping[str, Any] | None) -> None:
        """CHECK the pod's network (CNI >= 0.4.0, unless the config sets disableCheck)."""
        request.validate()
        network = await self._load()
        if network.disable_check or version_tuple(network.version) < (0, 4, 0):
            return
        call = _Call(request, request.netns, request.ifname, log.bind(sandbox=request.container_id))
        prev = self._as_prev(network, prev_result, call)
        with anyio.move_on_after(self.timeout) as scope:
            for plugin in network.plugins:
                await self._exec(network, plugin, "CHECK", call, prev)
        if scope.cancelled_caught:
            raise DeadlineExceeded(f"CNI CHECK did not finish within {self.timeout:g}s")


@contextlib.contextmanager
def _measured(operation: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except Exception:
        metrics.CNI_FAILURES.labels(operation).inc()
        raise
    finally:
        metrics.CNI_LATENCY.labels(operation).observe(time.monotonic() - started)
