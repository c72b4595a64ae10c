"""README's generated blocks (bench.readme) against the benchmark's JSON in docs/bench/."""

import pytest

from bench import readme


def test_readmes_blocks_are_written_from_docs_bench():
    _, stale = readme.rewritten(readme.README.read_text())
    assert stale == [], f"README's blocks {stale} are stale: run python -m bench.readme"


def test_a_stale_block_is_rewritten_and_named():
    text = readme.README.read_text()
    pattern = readme.block_pattern("calibrated")
    edited = pattern.sub(lambda m: m.group(1) + "| typed by hand | 0.1 |\n" + m.group(3), text)
    fixed, stale = readme.rewritten(edited)
    assert stale == ["calibrated"] and fixed == text


def test_a_missing_block_is_named():
    with pytest.raises(ValueError, match=f"'{list(readme.BLOCKS)[1]}'"):
        readme.rewritten("<!-- bench.readme calibrated -->\n<!-- /bench.readme calibrated -->\n")
