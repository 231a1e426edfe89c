import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from gateway import SERVICES, Gateway, make_certs  # noqa: E402


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    """One real gateway for the session, with fresh certificates from `sse-gateway certs`."""
    folder = make_certs(tmp_path_factory.mktemp("gateway"), SERVICES)
    gw = Gateway(folder).start()
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory):
    """Certificates from another CA - including one named like a permitted publisher."""
    return make_certs(tmp_path_factory.mktemp("other-ca"), ["l5-etl-service"])


@pytest.fixture
def ws():
    """A workspace id of this test's own, so tests never see each other's events."""
    return "ws-" + uuid.uuid4().hex[:10]
