from __future__ import annotations

from pathlib import Path

import pytest

from criproxy.config import Config, ConfigError, load_config, parse_config, parse_duration


def test_defaults_are_managed_mode_on_the_documented_paths() -> None:
    config = parse_config({})
    assert config.managed
    assert config.listen == Path("/run/criproxy/criproxy.sock")
    assert config.root == Path("/var/lib/criproxy")
    assert config.state == Path("/run/criproxy")
    assert config.containerd.namespace == "k8s.io"
    assert config.containerd.snapshotter == "overlayfs"
    assert config.restrict_oom_score_adj == "auto"
    assert config.cgroup_driver == "cgroupfs"
    assert set(config.runtimes) == {"runc", "crun"}
    assert config.image_pull_progress_timeout == 300.0


def test_full_file_is_read_with_containerd_key_names(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
root = "/srv/cpx"
state = "/run/cpx"
listen = "/run/cpx/cri.sock"
sandbox_image = "registry.k8s.io/pause:3.9"
restrict_oom_score_adj = true
max_container_log_line_size = 8192
image_pull_progress_timeout = "1m30s"
cgroup_driver = "systemd"
[containerd]
address = "unix:///run/containerd/containerd.sock"
namespace = "k8s.io"
snapshotter = "native"
[cni]
bin_dirs = ["/opt/cni/bin"]
conf_dir = "/etc/cni/net.d"
[registry]
config_path = "/etc/containerd/certs.d"
[stream_server]
address = "0.0.0.0"
port = 10010
[metrics]
address = "127.0.0.1:9190"
[checkpoint]
criu_path = "/usr/local/sbin/criu"
[runtimes.kata]
runtime_type = "io.containerd.kata.v2"
runtime_path = "/opt/kata/bin/containerd-shim-kata-v2"
[runtimes.kata.options]
ConfigPath = "/etc/kata/configuration.toml"
"""
    )
    config = load_config(path)
    assert not config.managed
    assert config.containerd.address == "/run/containerd/containerd.sock"
    assert config.image_pull_progress_timeout == 90.0
    assert config.cgroup_driver == "systemd"
    assert config.restrict_oom_score_adj is True
    assert config.stream_server.port == 10010
    assert config.cni.bin_dirs == ("/opt/cni/bin",)
    assert config.checkpoint.criu_path == "/usr/local/sbin/criu"
    kata = config.runtimes["kata"]
    assert kata.runtime_type == "io.containerd.kata.v2"
    assert kata.options["ConfigPath"] == "/etc/kata/configuration.toml"
    assert "runc" in config.runtimes  # defaults stay unless replaced


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('listen = "/a.sock"\n[containerd]\naddress = "/x.sock"\n')
    config = load_config(path, {"listen": "/b.sock", "containerd.address": "/y.sock"})
    assert config.listen == Path("/b.sock")
    assert config.containerd.address == "/y.sock"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cgroup_driver": "sysd"}, "config key 'cgroup_driver': invalid value 'sysd'"),
        ({"restrict_oom_score_adj": "yes"}, "'restrict_oom_score_adj': invalid value 'yes'"),
        ({"root": "relative/dir"}, "'root': invalid value 'relative/dir'"),
        ({"image_pull_progress_timeout": "5 minutes"}, "'image_pull_progress_timeout'"),
        ({"image_pull_progress_timeout": 300}, "invalid value 300"),
        ({"max_container_log_line_size": True}, "'max_container_log_line_size'"),
        ({"stream_server": {"port": 70000}}, "'stream_server.port': invalid value 70000"),
        ({"containerd": {"adress": "/x"}}, "unknown config key 'containerd.adress'"),
        ({"containerd": {"address": "tcp://x"}}, "'containerd.address'"),
        ({"cni": {"bin_dirs": []}}, "'cni.bin_dirs'"),
        ({"cni": {"bin_dirs": ["rel"]}}, "'cni.bin_dirs[0]'"),
        ({"metrics": {"address": "9090"}}, "'metrics.address': invalid value '9090'"),
        ({"checkpoint": {"criu_path": "criu"}}, "'checkpoint.criu_path': invalid value 'criu'"),
        ({"runtimes": {"x": {"runtime_type": ""}}}, "'runtimes.x.runtime_type'"),
        ({"runtimes": {"x": {"binary": "y"}}}, "unknown config key 'runtimes.x.binary'"),
        ({"default_runtime_name": "kata"}, "'default_runtime_name': invalid value 'kata'"),
        ({"sandbox_imag": "x"}, "unknown config key 'sandbox_imag'"),
        ({"containerd": "x"}, "'containerd': invalid value 'x' (expected a table)"),
    ],
)
def test_bad_values_name_the_key_and_the_value(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('cgroup_driver = "x"\n')
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)
    path.write_text("root = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("5m", 300.0), ("1m30s", 90.0), ("250ms", 0.25), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "5d", "-1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_effective_config_is_plain_json_data() -> None:
    import json

    data = Config().to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["runtimes"]["crun"]["options"] == {"BinaryName": "crun"}
    assert data["containerd"]["namespace"] == "k8s.io"
