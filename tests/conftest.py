import itertools

import pytest

_seeds = itertools.count(1000)


@pytest.fixture
def fresh_seed():
    """A seed no earlier test used: identical prompts are served from ComfyUI's cache."""
    return lambda: next(_seeds)
