"""README's and docs/calibration_options.md's generated blocks (bench.readme) against the
benchmark's JSON in docs/bench/."""

import pytest

from bench import readme


@pytest.mark.parametrize("document", readme.DOCUMENTS, ids=lambda p: p.name)
def test_the_blocks_are_written_from_docs_bench(document):
    _, stale = readme.rewritten(document.read_text(), document=document)
    assert stale == [], f"{document.name}'s blocks {stale} are stale: run python -m bench.readme"


def test_every_block_lives_in_one_document():
    assert sorted(n for d in readme.DOCUMENTS for n in readme.blocks_of(d)) == sorted(
        readme.BLOCKS)
    assert readme.blocks_of(readme.OPTIONS) and "calibrated" in readme.blocks_of(readme.README)


def test_a_stale_block_is_rewritten_and_named():
    for document, name in ((readme.README, "calibrated"), (readme.OPTIONS, "options-jacobian")):
        text = document.read_text()
        pattern = readme.block_pattern(name)
        edited = pattern.sub(lambda m: m.group(1) + "| typed by hand | 0.1 |\n" + m.group(3), text)
        fixed, stale = readme.rewritten(edited, document=document)
        assert stale == [name] and fixed == text


def test_a_missing_block_is_named():
    with pytest.raises(ValueError, match=f"^README.md has no block '{list(readme.BLOCKS)[1]}'"):
        readme.rewritten("<!-- bench.readme calibrated -->\n<!-- /bench.readme calibrated -->\n")
    first = readme.blocks_of(readme.OPTIONS)[0]
    with pytest.raises(ValueError, match=f"^calibration_options.md has no block '{first}'"):
        readme.rewritten("", document=readme.OPTIONS)
