"""Every page under docs/bench that a benchmark can rewrite from its JSON (--markdown-only) is
what its JSON gives today: a page is never older than the code that writes it."""

import shutil
from pathlib import Path

import pytest

from bench import calibrated, calibrated_sigmas, gradient_fit, options, oracle, transfer

BENCH = Path(__file__).resolve().parents[2] / "docs" / "bench"


def pages():
    for path in sorted(BENCH.glob("calibrated*.json")):  # calibrated, and its other runs
        if not path.stem.startswith("calibrated_sigmas"):
            yield calibrated.main, path.stem, ["--name", path.stem]
    yield transfer.main, "transfer", []
    for module, prefix in ((calibrated_sigmas, "calibrated_sigmas"), (options, "options"),
                           (oracle, "oracle"), (gradient_fit, "gradient_fit")):
        for path in sorted(BENCH.glob(f"{prefix}*.json")):
            if module is not options and path.stem.startswith("options"):
                continue
            yield module.main, path.stem, ["--name", path.stem]


@pytest.mark.parametrize("main, name, extra", list(pages()),
                         ids=[name for _, name, _ in pages()])
def test_the_page_is_what_its_json_gives(tmp_path, main, name, extra):
    shutil.copy(BENCH / f"{name}.json", tmp_path / f"{name}.json")
    main(["--markdown-only", "--out", str(tmp_path), *extra])
    written = (tmp_path / f"{name}.md").read_text()
    assert written == (BENCH / f"{name}.md").read_text(), (
        f"docs/bench/{name}.md is stale: rewrite it from its JSON (--markdown-only)")
