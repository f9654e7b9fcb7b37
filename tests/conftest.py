import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/*.txt from this run instead of comparing (review the diff)")


@pytest.fixture(scope="session", autouse=True)
def named_model_cache(tmp_path_factory):
    """Named models (bin/trace --model whisper-tiny.en) build into this session's cache, never ~/.cache."""
    directory = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(directory)
    yield directory
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def update_golden(request):
    return request.config.getoption("--update-golden")
