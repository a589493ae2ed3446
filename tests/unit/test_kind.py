"""deploy/kind: a kind node image with criproxy as its CRI endpoint, and a cluster of it.

This machine has no Docker engine, so neither the image is built nor a cluster made here:
the files are checked statically, for what building and running them relies on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from criproxy.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
KIND = REPO / "deploy" / "kind"


def _instructions() -> list[tuple[str, str]]:
    text = (KIND / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_node_image_is_kinds_with_criproxy_installed_and_enabled() -> None:
    steps = _instructions()
    assert steps[0][0] == "FROM"
    assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+", steps[0][1]), "a pinned kind node image"
    for kind, args in steps:
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    runs = " ".join(args for kind, args in steps if kind == "RUN")
    assert "pip install" in runs and "/usr/local/bin/criproxy" in runs
    assert "systemctl enable criproxy.service" in runs
    copies = {args.split()[-1]: args.split()[0] for kind, args in steps if kind == "COPY"}
    assert copies["/etc/systemd/system/criproxy.service"] == "deploy/criproxy.service"
    unit = (REPO / "deploy" / "criproxy.service").read_text()
    assert "ExecStart=/usr/local/bin/criproxy serve" in unit


def test_containerd_runs_without_its_cri_plugin() -> None:
    config = tomllib.loads((KIND / "containerd.toml").read_text())
    assert config["version"] == 2
    assert "io.containerd.grpc.v1.cri" in config["disabled_plugins"]


def test_criproxy_uses_the_nodes_containerd_and_kindnets_network() -> None:
    config = load_config(KIND / "criproxy.toml")
    assert config.containerd.address == "/run/containerd/containerd.sock"
    assert config.cni.conf_dir == "/etc/cni/net.d"
    assert config.cgroup_driver == "systemd"


def test_the_cluster_points_kubeadm_at_criproxy_on_every_node() -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster"
    patches = [yaml.safe_load(p) for p in cluster["kubeadmConfigPatches"]]
    sockets = {p["kind"]: p["nodeRegistration"]["criSocket"] for p in patches}
    socket = f"unix://{Config().listen}"
    assert sockets == {"InitConfiguration": socket, "JoinConfiguration": socket}
    dockerfile = (KIND / "Dockerfile").read_text()
    for node in cluster["nodes"]:
        assert node["image"] in dockerfile, "the image the Dockerfile's build line tags"
