"""Fixtures shared with tests/deploy: the local Debian base image for container builds."""

from tests.deploy.conftest import base_image  # noqa: F401
