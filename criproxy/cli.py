"""The `criproxy` command: serve, doctor."""

from __future__ import annotations

import argparse
import sys
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as err:
        print(f"criproxy: {err}", file=sys.stderr)
        return 2

    from criproxy import logs

    logs.configure(config.log_level)
    if args.command == "serve":
        from criproxy.server import StartError, serve

        failures: list[BaseException] = []
        try:
            anyio.run(serve, config)
        except* StartError as group:
            failures.extend(group.exceptions)
        for failure in failures:
            print(f"criproxy: {failure}", file=sys.stderr)
        return 1 if failures else 0
    if args.command == "doctor":
        from criproxy.doctor import run_doctor

        return anyio.run(run_doctor, config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
