"""Fixtures for registry tests: a fresh SQLite file per test, seeded with a chosen env."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Let `import registry` work under plain `pytest` before the project is pip-installed.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine  # noqa: E402

from registry import init_db, make_engine  # noqa: E402


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """URL of a registry file that does not exist yet (its directory neither)."""
    return f"sqlite:///{tmp_path / 'data' / 'router.db'}"


@pytest.fixture
def fresh_registry(db_url: str) -> Iterator[Engine]:
    """An initialised registry with no provider keys: only the local backend enabled."""
    eng = make_engine(db_url)
    init_db(eng, {})
    yield eng
    eng.dispose()
