"""crictl's four streaming commands against a running criproxy, each over SPDY and over
WebSocket, driven through a pseudo-terminal as a person at a terminal would.

No Debian package ships crictl, so this is not part of the test suite: run it where a
crictl is at hand (any build of kubernetes-sigs/cri-tools with `--transport`):

    .venv/bin/python -m tests.crictl_check --crictl /usr/local/bin/crictl \\
        --endpoint /run/criproxy/criproxy.sock --image busybox:1.36

It makes one pod (on criproxy's pod network) with one busybox container that serves
/etc over HTTP and echoes its terminal, then checks:
- `crictl exec -it CID sh`: `stty size` sees the terminal's size, a command's output
  comes back, `exit 7` ends crictl with the exit code reported;
- `crictl exec -s CID echo ...` (no terminal): the output;
- `crictl attach -it CID`: what is typed comes back through the container's terminal;
- `crictl port-forward POD LOCAL:8080`: /etc/passwd through the forward, twice.
The pod is removed at the end, whatever happened. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROWS, COLS = 33, 111
TRANSPORTS = ("spdy", "websocket")


def drive(argv: Sequence[str], sends: Sequence[bytes], *, pause: float = 1.0) -> tuple[bytes, int]:
    """Run `argv` on a pseudo-terminal of ROWS x COLS, type each of `sends` a `pause` apart,
    and collect what it writes until it exits (or 15 s): (output, exit status)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.execv(argv[0], list(argv))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    out, pending = b"", list(sends)
    deadline, next_send = time.monotonic() + 15, time.monotonic() + pause
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child is gone: EIO on the terminal
                data = b""
            if not data:
                break
            out += data
        if pending and time.monotonic() >= next_send:
            os.write(fd, pending.pop(0))
            next_send = time.monotonic() + pause
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # still running after 15 s, or exited already
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return out, os.waitstatus_to_exitcode(status)


class Checks:
    def __init__(self, crictl: str, endpoint: str) -> None:
        self.base = [crictl, "--runtime-endpoint", f"unix://{endpoint}"]
        self.failed: list[str] = []

    def crictl(self, *args: str) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"crictl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    def check(self, what: str, ok: bool, output: bytes | str = b"") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failed.append(what)
            print(f"     output: {output[-400:]!r}")

    @contextlib.contextmanager
    def pod(self, image: str, work: Path) -> Iterator[tuple[str, str]]:
        """(pod id, container id): the container serves /etc on 8080 and runs `cat` on
        its terminal."""
        logs = work / "logs"
        logs.mkdir()
        pod = {
            "metadata": {"name": "crictl-check", "namespace": "default", "uid": str(os.getpid())},
            "log_directory": str(logs),
            "linux": {},
        }
        container = {
            "metadata": {"name": "term"},
            "image": {"image": image},
            "command": ["/bin/sh", "-c", "httpd -p 8080 -h /etc; cat"],
            "stdin": True,
            "tty": True,
            "log_path": "term.log",
        }
        (work / "pod.json").write_text(json.dumps(pod))
        (work / "container.json").write_text(json.dumps(container))
        self.crictl("pull", image)
        pod_id = self.crictl("runp", str(work / "pod.json"))
        try:
            container_id = self.crictl(
                "create", pod_id, str(work / "container.json"), str(work / "pod.json")
            )
            self.crictl("start", container_id)
            yield pod_id, container_id
        finally:
            with contextlib.suppress(RuntimeError):
                self.crictl("stopp", pod_id)
                self.crictl("rmp", pod_id)

    def exec_terminal(self, container: str, transport: str) -> None:
        out, code = drive(
            [*self.base, "exec", "--transport", transport, "-it", container, "sh"],
            [b"stty size\r", b"echo seen-$((40+2))\r", b"exit 7\r"],
        )
        self.check(f"exec -it over {transport}: the terminal's size", b"33 111" in out, out)
        self.check(f"exec -it over {transport}: a command's output", b"seen-42" in out, out)
        self.check(
            f"exec -it over {transport}: exit 7 reported",
            code != 0 and b"exit code 7" in out,
            out,
        )

    def exec_plain(self, container: str, transport: str) -> None:
        out, code = drive(
            [*self.base, "exec", "--transport", transport, "-s", container, "echo", "plain-ok"],
            [],
        )
        self.check(f"exec -s over {transport}", code == 0 and b"plain-ok" in out, out)

    def attach(self, container: str, transport: str) -> None:
        word = f"typed-over-{transport}".encode()
        out, _ = drive(
            [*self.base, "attach", "--transport", transport, "-it", container], [word + b"\r"]
        )
        # the container's terminal echoes it, then cat writes it: twice
        self.check(f"attach -it over {transport}: the input comes back", out.count(word) >= 2, out)

    def port_forward(self, pod: str, transport: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        forward = subprocess.Popen(
            [*self.base, "port-forward", "--transport", transport, pod, f"{local}:8080"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            bodies: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(bodies) < 2 and time.monotonic() < deadline:
                try:
                    url = f"http://127.0.0.1:{local}/passwd"
                    with urllib.request.urlopen(url, timeout=5) as response:
                        bodies.append(response.read())
                except OSError:
                    time.sleep(0.3)
            ok = len(bodies) == 2 and all(b.startswith(b"root:") for b in bodies)
            self.check(f"port-forward over {transport}: /etc/passwd twice", ok, repr(bodies))
        finally:
            forward.terminate()
            forward.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.crictl_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--crictl", required=True, help="path of the crictl binary")
    parser.add_argument("--endpoint", required=True, help="criproxy's CRI socket")
    parser.add_argument("--image", required=True, help="a busybox image the runtime can pull")
    args = parser.parse_args(argv)
    checks = Checks(str(Path(args.crictl).resolve()), args.endpoint)
    with (
        tempfile.TemporaryDirectory(prefix="crictl-check-") as work,
        checks.pod(args.image, Path(work)) as (pod, container),
    ):
        for transport in TRANSPORTS:
            checks.exec_terminal(container, transport)
            checks.exec_plain(container, transport)
            checks.attach(container, transport)
            checks.port_forward(pod, transport)
    print(f"{len(checks.failed)} check(s) failed" if checks.failed else "every check passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
