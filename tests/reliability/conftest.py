"""Every test in tests/reliability/ carries the ``reliability`` marker (``pytest -m reliability``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability._net import make_repository
from tests.runtimes.conftest import running_server

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A model repository for the server hardening tests (see ``_net.make_repository``)."""
    return make_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(repo):
    """A real server on loopback serving ``repo``."""
    with running_server(repo) as srv:
        yield srv
