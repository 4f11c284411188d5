"""Mark every test by the folder it lives in, and run unit tests before integration tests."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent

# Folder under tests/ -> marker. Putting a test in the right folder is all it takes
# to be selected by `pytest -m unit` or `pytest -m integration`.
_MARKER_BY_FOLDER = {"unit": pytest.mark.unit, "integration": pytest.mark.integration}

# Fast, hermetic tests first: a logic bug then fails in seconds, before any
# redis-server is started.
_RUN_ORDER = {"unit": 0, "integration": 2}
_OTHER_TESTS_ORDER = 1


def _folder(item: pytest.Item) -> str | None:
    if not item.path.is_relative_to(TESTS_DIR):
        return None
    parts = item.path.relative_to(TESTS_DIR).parts
    return parts[0] if len(parts) > 1 else None


# A wrapper: the markers go on before every other hook (pytest's own applies `-m`),
# and the sort runs after all of them (pytest-django moves Django TestCase classes,
# Django's own cache suite in tests/integration, to the front).
@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Generator[None]:
    for item in items:
        marker = _MARKER_BY_FOLDER.get(_folder(item) or "")
        if marker is not None:
            item.add_marker(marker)
    yield
    # A stable sort keeps each module's tests together and in file order.
    items.sort(key=lambda item: _RUN_ORDER.get(_folder(item) or "", _OTHER_TESTS_ORDER))
