"""What each sampler name is (lml_core.sampler_kinds): the one table bench/field.py and the Lab
share.  Every name of this host and of the newer host in ../shared/hosts is placed, and an
unknown name is classified by its name or reported - never an error."""

import ast
import tarfile
from pathlib import Path

import pytest

from lml_core import classify, expected_nfe, is_stochastic, samplers_of_kind
from lml_core.sampler_kinds import UNKNOWN

ROOT = Path(__file__).resolve().parents[2]
NEWER_HOST = ROOT.parent / "shared" / "hosts" / "comfyui-0.33.0.tar.gz"


def sampler_names(source: str) -> list[str]:
    """KSAMPLER_NAMES + the extra names of SAMPLER_NAMES, read from a comfy/samplers.py."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in (
                "KSAMPLER_NAMES", "SAMPLER_NAMES"):
            value = node.value
            if isinstance(value, ast.BinOp):  # SAMPLER_NAMES = KSAMPLER_NAMES + [...]
                value = value.right
            names += [n for n in ast.literal_eval(value) if n not in names]
    return names


def newer_host_names() -> list[str]:
    if not NEWER_HOST.exists():
        pytest.skip(f"{NEWER_HOST} is not here (CI and developers have it)")
    with tarfile.open(NEWER_HOST) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("comfy/samplers.py"))
        return sampler_names(tar.extractfile(member).read().decode())


def test_every_name_of_the_newer_host_is_placed():
    names = newer_host_names()
    assert {"exp_heun_2_x0", "exp_heun_2_x0_sde"} <= set(names)
    groups = {name: classify(name) for name in names}
    assert UNKNOWN not in groups.values(), groups
    assert groups["exp_heun_2_x0"] == "deterministic"
    assert groups["exp_heun_2_x0_sde"] == "stochastic"
    assert expected_nfe("exp_heun_2_x0", 4) == 7  # 2 per step, 1 on the last (seeds_2, r=1)


def test_unknown_names_are_classified_by_their_name_or_reported():
    assert classify("a_sampler_from_the_future") == UNKNOWN
    assert classify("foo_ancestral") == "stochastic" and is_stochastic("foo_ancestral")
    assert classify("foo_sde") == "stochastic"
    assert classify("foo_cfg_pp") == "guided deterministic"
    assert classify("foo_ancestral_cfg_pp") == "guided stochastic"
    assert classify("foo_sde_gpu").startswith("not run")
    assert expected_nfe("a_sampler_from_the_future", 5) == 5


def test_groups_keep_the_table_order_then_the_hosts_new_names():
    host = ["new_sde", "euler", "dpmpp_2m", "heun", "euler_ancestral"]
    assert samplers_of_kind("deterministic", host) == ("euler", "heun", "dpmpp_2m")
    assert samplers_of_kind("stochastic", host) == ("euler_ancestral", "new_sde")


def test_expected_nfe_and_stochastic():
    assert [expected_nfe("euler", n) for n in (1, 2, 8)] == [1, 2, 8]
    assert [expected_nfe("heun", n) for n in (1, 2, 4, 8)] == [1, 3, 7, 15]
    assert expected_nfe("seeds_3", 4) == 10
    assert [expected_nfe("heunpp2", n) for n in (1, 2, 5)] == [1, 3, 12]
    assert expected_nfe("lml_euler", 6) == 6
    assert is_stochastic("euler_ancestral") and is_stochastic("lml_euler_ancestral")
    assert is_stochastic("dpmpp_2m_sde") and is_stochastic("some_new_ancestral")
    assert is_stochastic("ddpm") and is_stochastic("dpmpp_sde_gpu")
    assert not any(map(is_stochastic, ("euler", "heun", "dpmpp_2m", "lml_euler", "uni_pc")))
