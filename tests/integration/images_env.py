"""A containerd and a criproxy for image tests, with a certs.d directory tests write into."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

from criproxy._generated.cri.runtime.v1 import api_pb2
from tests.integration.helpers import ContainerdProcess, Criproxy
from tests.support.registry import Registry


@dataclass
class ImageEnv:
    containerd: ContainerdProcess
    proxy: Criproxy
    certs_d: Path

    def trust(self, registry: Registry, *, host: str | None = None, extra: str = "") -> None:
        """hosts.toml for `registry` (CA, client cert) so criproxy can reach it."""
        name = host or registry.host
        lines = [f'server = "{registry.url}"']
        if registry.ca_path:
            lines.append(f'ca = "{registry.ca_path}"')
        if registry.client_cert:
            lines.append(
                f'client = [["{registry.client_cert.cert}", "{registry.client_cert.key}"]]'
            )
        self.write_hosts(name, "\n".join(lines) + "\n" + extra)

    def write_hosts(self, name: str, text: str) -> None:
        directory = self.certs_d / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(text)

    def pull(self, ref: str, auth: api_pb2.AuthConfig | None = None, timeout: float = 120) -> str:
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        if auth is not None:
            request.auth.CopyFrom(auth)
        return self.proxy.images.PullImage(request, timeout=timeout).image_ref

    def pull_error(self, ref: str, **kwargs: object) -> grpc.RpcError:
        try:
            self.pull(ref, **kwargs)  # type: ignore[arg-type]
        except grpc.RpcError as err:
            return err
        raise AssertionError(f"pull of {ref} succeeded")

    def status(self, ref: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
        return self.proxy.images.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref), verbose=verbose)
        )

    def remove(self, ref: str) -> None:
        self.proxy.images.RemoveImage(
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref))
        )

    def list(self) -> list[api_pb2.Image]:
        return list(self.proxy.images.ListImages(api_pb2.ListImagesRequest()).images)

    def layer_downloads(self, digest: str) -> int:
        return sum(
            1
            for r in self.proxy.log_records()
            if r.get("event") == "layer downloaded" and r.get("layer") == digest
        )

    def ctr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.ctr_in("k8s.io", *args, timeout=timeout)

    def ctr_in(
        self, namespace: str, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.containerd.socket), "-n", namespace, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def private_env(base: Path, ctd: ContainerdProcess, **config: object) -> ImageEnv:
    """A criproxy of its own (with `config`) on a shared containerd, not started yet."""
    env = ImageEnv(ctd, Criproxy(base / "cpx", containerd=ctd.socket), base / "certs.d")
    env.certs_d.mkdir(parents=True)
    env.proxy.config = {"registry": {"config_path": str(env.certs_d)}, **config}
    return env
