"""The shape of the shipped core: a one-way import chain, public names only across modules, no
benchmark or plotting import, and one validated options object."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lml_core import (
    DEFAULTS,
    OMEGA_AUTO_WIDGET,
    SOLVER_DEFAULTS,
    LMOptions,
    omega_widget,
    sample_lml_euler,
)

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "lml_core"
# Each module may import only modules to its left.
CHAIN = ["gram", "options", "adaptive", "precondition", "sampling", "wrap", "sampler_kinds",
         "calibration_text", "calibration", "reference", "objective", "sigma_fit", "projection",
         "linear_fit", "levenberg", "field", "calibrate_options", "calibrate", "calibrate_steps",
         "__init__"]
SHIPPED = [CORE / f"{name}.py" for name in CHAIN] + sorted((ROOT / "nodes").glob("*.py")) + [
    ROOT / "__init__.py"]


def relative_imports(path):
    """(module, names, at top level) for every ``from .x import ...`` in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    return [(node.module, [a.name for a in node.names], id(node) in top)
            for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1]


def test_every_core_module_is_in_the_chain():
    assert sorted(p.stem for p in CORE.glob("*.py")) == sorted(CHAIN)
    assert not (CORE / "bench").exists()


@pytest.mark.parametrize("name", CHAIN)
def test_core_imports_run_one_way_public_names_only(name):
    for module, names, at_top in relative_imports(CORE / f"{name}.py"):
        assert at_top, f"{name} imports .{module} inside a function"
        assert CHAIN.index(module) < CHAIN.index(name), f"{name} imports .{module}: a cycle"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{name} imports private {private} from .{module}"


def test_shipped_code_never_imports_the_benchmark_or_plotting():
    for path in SHIPPED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in ("bench", "harness", "matplotlib",
                                                     "sklearn"), (path, module)


def test_importing_lml_core_loads_no_benchmark_module():
    code = ("import lml_core, sys; bad = [m for m in sys.modules if m.startswith(("
            "'matplotlib', 'sklearn', 'bench'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_options_are_validated_when_built_and_passed_on_as_they_are():
    lm = LMOptions(**DEFAULTS)
    assert LMOptions.for_sampler("lml_euler", lm) is lm
    assert LMOptions.for_sampler("lml_euler") == lm
    assert LMOptions.for_sampler("lml_dpmpp_2m").as_dict() == SOLVER_DEFAULTS["lml_dpmpp_2m"]
    assert LMOptions.for_sampler("lml_euler", lm, rank=3).rank == 3
    with pytest.raises(ValueError, match="kappa"):
        LMOptions(**{**DEFAULTS, "kappa": 2.0})
    with pytest.raises(ValueError, match="rank"):
        LMOptions(**{**DEFAULTS, "rank": 1.5})
    with pytest.raises(ValueError, match="dampng"):
        LMOptions.for_sampler("lml_euler", dampng=2.0)


def test_every_sampler_has_one_default_and_the_stochastic_ones_are_named():
    from lml_core import SAMPLERS, STOCHASTIC_SAMPLERS

    assert set(STOCHASTIC_SAMPLERS) <= set(SAMPLERS) and STOCHASTIC_SAMPLERS
    for name in SAMPLERS:
        assert LMOptions.for_sampler(name).as_dict() == SOLVER_DEFAULTS[name]


def test_omega_widget_maps_auto_both_ways():
    assert omega_widget("auto") == OMEGA_AUTO_WIDGET < 0
    assert omega_widget(OMEGA_AUTO_WIDGET) == "auto" and omega_widget(-0.5) == "auto"
    assert omega_widget(0.25) == 0.25 and omega_widget(0.0) == 0.0


def test_options_object_and_keywords_give_the_same_samples():
    def model(x, sigma, **_):
        return 0.8 * x / (1 + sigma[:, None] ** 2)

    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = torch.tensor([10.0, 4.0, 1.5, 0.5, 0.0])
    by_keywords = sample_lml_euler(model, x, sigmas, rank=2, damping=0.5, disable=True)
    lm = LMOptions(**{**DEFAULTS, "rank": 2, "damping": 0.5})
    assert torch.equal(sample_lml_euler(model, x, sigmas, lm=lm, disable=True), by_keywords)


def test_the_module_map_lists_the_chain_in_order():
    """lml_core/README.md's module table is the one map of the package: every module, in the
    import chain's order; README.md names every node module and points there."""
    rows = [line.split("`")[1] for line in (CORE / "README.md").read_text().splitlines()
            if line.startswith("| `") and line.split("`")[1].endswith(".py")]
    assert rows == [f"{name}.py" for name in CHAIN if name != "__init__"]
    readme = (ROOT / "README.md").read_text()
    assert "[lml_core/README.md](lml_core/README.md)" in readme
    for path in sorted((ROOT / "nodes").glob("*.py")):
        if path.stem != "__init__":
            assert f"`{path.name}`" in readme, f"README's module list misses nodes/{path.name}"


def test_no_core_module_is_over_400_lines():
    long = {p.name: n for p in CORE.glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
