import pytest

from ._runs import killed_run


@pytest.fixture(scope="session")
def pristine_run(tmp_path_factory):
    """A real run directory: three closed spans and one open when its process was SIGKILLed."""
    return killed_run(str(tmp_path_factory.mktemp("pristine")))
