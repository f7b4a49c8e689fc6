import pytest

from .helpers import EXECUTORS


@pytest.fixture(params=EXECUTORS)
def device(request):
    return request.param
