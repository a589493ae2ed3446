"""Suite-wide rules: with CRIPROXY_REQUIRE_ALL=1 (the README's test command, CI) a skip fails
the run, because every test can run on a machine set up by that command."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.fixtures"]

_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CRIPROXY_REQUIRE_ALL") and _skipped:
        print(f"\n{len(_skipped)} test(s) skipped, but CRIPROXY_REQUIRE_ALL forbids skips:")
        for nodeid in _skipped:
            print(f"  {nodeid}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
