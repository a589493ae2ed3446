"""Suite-wide rules: with CRIPROXY_REQUIRE_ALL=1 (the README's test command, CI) a skip fails
the run, because every test can run on a machine set up by that command, with one
exception: the checkpoint tests need CRIU >= 4, which no Debian 12 package carries, and
skip (saying CRIU_MISSING) where none is installed."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.fixtures"]

CRIU_MISSING = "needs a working CRIU >= 4"
"""The one reason a test may skip under CRIPROXY_REQUIRE_ALL."""

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and CRIU_MISSING not in str(report.longrepr):
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CRIPROXY_REQUIRE_ALL") and _skipped:
        print(f"\n{len(_skipped)} test(s) skipped, but CRIPROXY_REQUIRE_ALL forbids skips:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
