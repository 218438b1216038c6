"""Shared fixtures. Tests that need ../shared (reference data that is not part of the project) skip when it
is absent, except under CI (env CI set), where its absence is a failure."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import darknetpy  # noqa: F401  (before any test module imports numpy: its thread settings, as the README says)

SHARED = Path(__file__).resolve().parents[2] / "shared"

# No compile-ahead helper processes (darknetpy.compile_ahead) for the commands the tests run: the suite's
# worker processes already keep every core busy. Its own tests switch it on.
os.environ.setdefault("DARKNETPY_COMPILE_AHEAD", "0")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing (CI is set, so reference data must be present)")
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return shared_path()
