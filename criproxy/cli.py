"""The `criproxy` command: serve, doctor."""

from __future__ import annotations

import argparse
import os
import signal
import sys

# criproxy forks only to exec (CNI plugins, containerd); gRPC's fork handlers are for fork
# without exec, and with gRPC threads busy they crash the child before its exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from pathlib import Path
from typing import Any

import anyio

from criproxy import __version__
from criproxy.config import Config, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="criproxy", description="A Kubernetes CRI v1 runtime endpoint over containerd."
    )
    parser.add_argument("--version", action="version", version=f"criproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve CRI on a unix socket")
    serve.add_argument(
        "--config", type=Path, help="TOML config (default /etc/criproxy/config.toml)"
    )
    serve.add_argument("--listen", help="CRI socket path (default /run/criproxy/criproxy.sock)")
    serve.add_argument(
        "--containerd", help="containerd socket; without one, criproxy runs its own containerd"
    )
    serve.add_argument("--root", help="persistent state dir (default /var/lib/criproxy)")
    serve.add_argument("--state", help="runtime state dir (default /run/criproxy)")

    images = sub.add_parser("images", help="work with containerd's image store")
    images_sub = images.add_subparsers(dest="images_command", required=True)
    image_import = images_sub.add_parser(
        "import", help="load an OCI image layout or docker save tar (offline nodes)"
    )
    image_import.add_argument("file", type=Path, help="the archive")
    image_import.add_argument("--config", type=Path, help="TOML config")
    image_import.add_argument("--containerd", help="containerd socket (default: the managed one)")
    image_import.add_argument("--root", help="criproxy's root dir (managed containerd)")
    image_import.add_argument("--state", help="criproxy's state dir (managed containerd)")

    doctor = sub.add_parser("doctor", help="check what this node needs and say how to fix it")
    doctor.add_argument(
        "--config", type=Path, help="TOML config (default /etc/criproxy/config.toml)"
    )
    doctor.add_argument("--containerd", help="containerd socket to check")
    return parser


def _load(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen", "listen"),
        ("containerd", "containerd.address"),
        ("root", "root"),
        ("state", "state"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)


def default_sigchld() -> None:
    """Undo an ignored SIGCHLD inherited from the parent: with it the kernel reaps every
    child itself, and a failed CNI plugin's exit status would read as success."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    default_sigchld()
    try:
        config = _load(args)
    except ConfigError as err:
        print(f"criproxy: {err}", file=sys.stderr)
        return 2

    from criproxy import logs

    logs.configure(config.log_level)
    if args.command == "serve":
        from criproxy.server import StartError, serve

        # A reload asked before the server listens for it must not end the process. (The
        # server's own handler replaces this before it starts any process, so nothing it
        # starts inherits an ignored SIGHUP.)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        failures: list[BaseException] = []
        try:
            anyio.run(serve, config, lambda: _load(args))
        except* StartError as group:
            failures.extend(group.exceptions)
        for failure in failures:
            print(f"criproxy: {failure}", file=sys.stderr)
        return 1 if failures else 0
    if args.command == "images":
        return anyio.run(_import_images, config, args.file)
    if args.command == "doctor":
        from criproxy.doctor import run_doctor

        return anyio.run(run_doctor, config)
    return 2


async def _import_images(config: Config, path: Path) -> int:
    from criproxy.containerd import Containerd
    from criproxy.containerd.managed import ManagedPaths
    from criproxy.errors import CriproxyError
    from criproxy.images.archive import Importer
    from criproxy.images.reference import parse_docker_ref

    address = config.containerd.address or str(ManagedPaths.under(config.root, config.state).socket)
    containerd = Containerd(address, config.containerd.namespace)
    try:
        if not await containerd.ping(timeout=5):
            print(
                f"criproxy: containerd at {address} does not answer "
                "(in managed mode, criproxy serve must be running)",
                file=sys.stderr,
            )
            return 1
        importer = Importer(
            containerd,
            config.containerd.snapshotter,
            str(parse_docker_ref(config.sandbox_image)),
        )
        for image in await importer.import_file(path):
            names = ", ".join(image.names) or "(no name)"
            print(f"imported {image.id} {names}")
    except CriproxyError as err:
        print(f"criproxy: import of {path} failed: {err.message}", file=sys.stderr)
        return 1
    finally:
        await containerd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
