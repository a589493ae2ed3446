"""Exec, Attach and PortForward requests, validated as the kubelet's streaming server
validates them (before a token is handed out)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from criproxy.containers.streams import AttachRequest, ExecRequest, PortForwardRequest
from criproxy.errors import InvalidArgument

if TYPE_CHECKING:
    from criproxy._generated.cri.runtime.v1 import api_pb2


def _std_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be set")


def exec_request(r: api_pb2.ExecRequest) -> ExecRequest:
    if not r.container_id:
        raise InvalidArgument("container_id is required")
    if not r.cmd:
        raise InvalidArgument("cmd is required")
    _std_streams(r.tty, r.stdin, r.stdout, r.stderr)
    return ExecRequest(r.container_id, tuple(r.cmd), r.tty, r.stdin, r.stdout, r.stderr)


def attach_request(r: api_pb2.AttachRequest) -> AttachRequest:
    if not r.container_id:
        raise InvalidArgument("container_id is required")
    _std_streams(r.tty, r.stdin, r.stdout, r.stderr)
    return AttachRequest(r.container_id, r.tty, r.stdin, r.stdout, r.stderr)


def port_forward_request(r: api_pb2.PortForwardRequest) -> PortForwardRequest:
    if not r.pod_sandbox_id:
        raise InvalidArgument("pod_sandbox_id is required")
    for port in r.port:
        if not 0 < port < 65536:
            raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
    return PortForwardRequest(r.pod_sandbox_id, tuple(r.port))
