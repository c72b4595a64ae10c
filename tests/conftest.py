import itertools
import pathlib
import sys

import pytest

# The repository root on sys.path, so `import lml_core` works from any test directory.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


_seeds = itertools.count(1000)


@pytest.fixture
def fresh_seed():
    """A seed no earlier test used: identical prompts are served from ComfyUI's cache."""
    return lambda: next(_seeds)
