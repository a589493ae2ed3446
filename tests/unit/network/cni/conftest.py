"""Fake CNI plugins: one small script under several plugin names, driven by its own config.

Each run appends {plugin, conf, env} to $FAKE_CNI_LOG. A plugin's config may carry
`"fake": {"ADD": {...}, "DEL": {...}}` with `result`, `exit`, `stdout`, `stderr`, `sleep`;
without one, ADD passes prevResult on or makes a one-interface result for CNI_IFNAME.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
conf = json.load(sys.stdin)
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_CNI_LOG"], "a") as log:
    log.write(json.dumps({{"plugin": name, "conf": conf, "env": env}}) + "\\n")
cmd = env["CNI_COMMAND"]
spec = conf.get("fake", {{}}).get(cmd, {{}})
time.sleep(spec.get("sleep", 0))
if "stderr" in spec:
    sys.stderr.write(spec["stderr"])
if "stdout" in spec:
    sys.stdout.write(spec["stdout"])
if spec.get("exit"):
    sys.exit(spec["exit"])
if cmd == "ADD" and "stdout" not in spec:
    if "result" in spec:
        result = spec["result"]
    elif "prevResult" in conf:
        result = conf["prevResult"]
    else:
        ip = {{"interface": 0, "address": spec.get("address", "10.123.200.7/24"),
              "gateway": "10.123.200.1"}}
        if conf["cniVersion"] < "1.0.0":
            ip["version"] = "4"
        result = {{"cniVersion": conf["cniVersion"],
                  "interfaces": [{{"name": env["CNI_IFNAME"], "sandbox": env["CNI_NETNS"]}}],
                  "ips": [ip]}}
    json.dump(result, sys.stdout)
"""

PLUGINS = ("loopback", "alpha", "beta", "gamma")


@dataclass
class FakeCni:
    """A conf dir and a bin dir of fake plugins, and the log of what they were run with."""

    conf_dir: Path
    bin_dir: Path
    log: Path

    def write_conflist(
        self, plugins: list[dict[str, Any]], version: str = "1.0.0", **extra: Any
    ) -> None:
        for old in self.conf_dir.iterdir():
            old.unlink()
        data = {"cniVersion": version, "name": "fakenet", "plugins": plugins, **extra}
        (self.conf_dir / "10-fake.conflist").write_text(json.dumps(data))

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def calls_of(self, command: str, network: str | None = "fakenet") -> list[dict[str, Any]]:
        return [
            c
            for c in self.calls()
            if c["env"]["CNI_COMMAND"] == command
            and (network is None or c["conf"]["name"] == network)
        ]

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def fake_cni(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCni:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    script = FAKE_PLUGIN.format(python=sys.executable)
    for name in PLUGINS:
        (bin_dir / name).write_text(script)
        os.chmod(bin_dir / name, 0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CNI_LOG", str(log))
    return FakeCni(conf_dir, bin_dir, log)
