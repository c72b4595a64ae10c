"""pytest plugin (loaded by pytest.ini): the repository root is a ComfyUI package whose
__init__.py imports comfy, so collect it as a plain directory instead of importing it."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_collect_directory(path, parent):
    if path == ROOT:
        return pytest.Dir.from_parent(parent, path=path)
    return None
