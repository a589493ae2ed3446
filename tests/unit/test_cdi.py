"""CDI spec files resolved and their edits applied to an OCI spec."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from criproxy import cdi

VENDOR = {
    "cdiVersion": "0.6.0",
    "kind": "vendor.example/gpu",
    "containerEdits": {"env": ["VENDOR_LIB=/opt/vendor"], "additionalGids": [44]},
    "devices": [
        {
            "name": "0",
            "containerEdits": {
                "env": ["GPU=0"],
                "deviceNodes": [
                    {"path": "/dev/gpu0", "type": "c", "major": 1, "minor": 3, "permissions": "rw"}
                ],
                "mounts": [{"hostPath": "/opt/vendor", "containerPath": "/vendor"}],
                "hooks": [{"hookName": "createContainer", "path": "/bin/true", "args": ["true"]}],
            },
        },
        {
            "name": "null",
            "containerEdits": {"deviceNodes": [{"path": "/dev/hostnull", "hostPath": "/dev/null"}]},
        },
    ],
}


def _spec() -> dict[str, Any]:
    return {"process": {"env": ["PATH=/bin", "GPU=none"], "user": {"uid": 0, "gid": 0}}}


def _write(directory: Path, name: str, data: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(data))


def test_a_device_and_its_spec_edits_go_into_the_oci_spec(tmp_path: Path) -> None:
    _write(tmp_path / "etc", "vendor.json", VENDOR)
    spec = _spec()
    cdi.inject(spec, ["vendor.example/gpu=0"], [str(tmp_path / "etc")])

    assert spec["process"]["env"] == ["PATH=/bin", "GPU=0", "VENDOR_LIB=/opt/vendor"]
    assert spec["process"]["user"]["additionalGids"] == [44]
    assert spec["linux"]["devices"] == [{"path": "/dev/gpu0", "type": "c", "major": 1, "minor": 3}]
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}
    ]
    assert spec["mounts"] == [
        {"destination": "/vendor", "source": "/opt/vendor", "type": "bind", "options": ["bind"]}
    ]
    assert spec["hooks"] == {"createContainer": [{"path": "/bin/true", "args": ["true"]}]}


def test_a_device_node_without_numbers_takes_them_from_the_host(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "vendor.yaml").write_text(
        "cdiVersion: 0.6.0\nkind: vendor.example/gpu\ndevices:\n"
        "  - name: nulldev\n    containerEdits:\n      deviceNodes:\n"
        "        - path: /dev/hostnull\n          hostPath: /dev/null\n"
    )
    spec = _spec()
    cdi.inject(spec, ["vendor.example/gpu=nulldev"], [str(tmp_path / "etc")])
    st = os.stat("/dev/null")
    (node,) = spec["linux"]["devices"]
    assert (node["path"], node["type"]) == ("/dev/hostnull", "c")
    assert (node["major"], node["minor"]) == (os.major(st.st_rdev), os.minor(st.st_rdev))


def test_a_later_directory_overrides_and_a_double_in_one_directory_is_refused(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "etc", "vendor.json", VENDOR)
    override = {
        **VENDOR,
        "containerEdits": {},
        "devices": [{"name": "0", "containerEdits": {"env": ["GPU=run"]}}],
    }
    _write(tmp_path / "run", "vendor.json", override)
    spec = _spec()
    cdi.inject(spec, ["vendor.example/gpu=0"], [str(tmp_path / "etc"), str(tmp_path / "run")])
    assert spec["process"]["env"] == ["PATH=/bin", "GPU=run"]

    _write(tmp_path / "run", "again.json", override)
    with pytest.raises(cdi.CdiError, match="described twice"):
        cdi.inject(_spec(), ["vendor.example/gpu=0"], [str(tmp_path / "run")])


def test_an_unknown_device_or_name_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "etc", "vendor.json", VENDOR)
    with pytest.raises(cdi.CdiError, match=r"unresolvable CDI devices vendor\.example/gpu=7"):
        cdi.inject(
            _spec(), ["vendor.example/gpu=0", "vendor.example/gpu=7"], [str(tmp_path / "etc")]
        )
    with pytest.raises(cdi.CdiError, match="not a CDI device name"):
        cdi.parse_name("gpu0")


def test_the_annotations_name_devices() -> None:
    annotations = {"cdi.k8s.io/a": "vendor.example/gpu=0, vendor.example/gpu=1", "other": "x"}
    assert cdi.annotated_devices(annotations) == ["vendor.example/gpu=0", "vendor.example/gpu=1"]


def test_a_broken_spec_file_is_skipped_and_named_and_malformed_edits_are_an_error(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "etc", "vendor.json", VENDOR)
    (tmp_path / "etc" / "broken.yaml").write_text("kind: [not, a, kind\n")
    spec = _spec()
    cdi.inject(spec, ["vendor.example/gpu=0"], [str(tmp_path / "etc")])
    assert "GPU=0" in spec["process"]["env"], "the good spec still serves"
    with pytest.raises(cdi.CdiError, match=r"broken\.yaml"):
        cdi.inject(_spec(), ["other.example/x=1"], [str(tmp_path / "etc")])

    bad = {
        "kind": "bad.example/dev",
        "devices": [{"name": "m", "containerEdits": {"mounts": [{}]}}],
    }
    _write(tmp_path / "bad", "bad.json", bad)
    with pytest.raises(cdi.CdiError, match="malformed edits"):
        cdi.inject(_spec(), ["bad.example/dev=m"], [str(tmp_path / "bad")])
