"""Tests of the quality benchmark's own machinery (bench): exact posterior means, the
reference solver, the field (the host's own samplers, honest NFE counts), and the quick run."""

import json

# matplotlib and scikit-learn come with the host (scripts/install_host.sh): no skip here, a
# missing dependency must fail the suite rather than hide these tests.
import comfy.extra_samplers.uni_pc
import comfy.k_diffusion.sampling
import comfy.samplers
import pytest
import torch

from bench import field
from bench.common import initial_noise, reference_solution, rms
from bench.exact import GaussianMixture, MixtureModel, mixture_2d
from bench.suite import nfe_of, run_sampler, sampler_fn, sigmas_for, steps_for_nfe
from lml_core import classify


def _dense_posterior_mean(mix, x, s, flow):
    """E[x0 | x] from dense covariances (torch.linalg.solve), for x = a x0 + s n."""
    a = 1 - s if flow else 1.0
    x = x.double()
    eye = torch.eye(mix.dim, dtype=torch.float64)
    logs, means = [], []
    for k in range(len(mix.weights)):
        u, d = mix.bases[k], mix.variances[k]
        sigma_k = u @ torch.diag(d) @ u.T + mix.iso * eye
        cov = a * a * sigma_k + s * s * eye
        y = x - a * mix.means[k]
        sol = torch.linalg.solve(cov, y.T).T
        logs.append(torch.log(mix.weights[k]) - 0.5 * (y * sol).sum(1) - 0.5 * torch.logdet(cov))
        means.append(mix.means[k] + a * sol @ sigma_k)
    post = torch.softmax(torch.stack(logs, 1), 1)
    return (post[:, :, None] * torch.stack(means, 1)).sum(1)


@pytest.mark.parametrize("flow", [False, True])
@pytest.mark.parametrize("s", [0.05, 0.5, 0.97])
def test_low_rank_posterior_mean_matches_dense_solve(flow, s):
    gen = torch.Generator().manual_seed(0)
    k, dim, r = 3, 7, 2
    bases = torch.stack([torch.linalg.qr(torch.randn(dim, r, generator=gen, dtype=torch.float64))[0]
                         for _ in range(k)])
    mix = GaussianMixture("t", torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
                          torch.randn(k, dim, generator=gen, dtype=torch.float64), bases,
                          torch.rand(k, r, generator=gen, dtype=torch.float64) + 0.1, 0.03)
    x = torch.randn(50, dim, generator=gen, dtype=torch.float64)
    assert torch.allclose(mix.denoise(x, s, flow), _dense_posterior_mean(mix, x, s, flow),
                          atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("flow", [False, True])
def test_full_rank_posterior_mean_matches_monte_carlo(flow):
    mix = mixture_2d()
    s = 0.4
    a = 1 - s if flow else 1.0
    x0, _ = mix.sample(400_000, torch.Generator().manual_seed(1))
    x = torch.tensor([[2.0, 0.1], [0.0, 1.5], [-1.0, -1.0]], dtype=torch.float64)
    # E[x0 | x] = sum_i w_i x0_i with w_i ~ N(x; a x0_i, s^2 I) (self-normalised)
    logw = -((x[:, None, :] - a * x0[None]) ** 2).sum(-1) / (2 * s * s)
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    assert torch.allclose(mix.denoise(x, s, flow), mc, atol=0.02)


@pytest.mark.parametrize("kind", ["karras", "flow"])
def test_reference_solver_converges(kind):
    mix = mixture_2d()
    model = MixtureModel(mix, kind == "flow")
    x = initial_noise(kind, torch.randn(32, 2, generator=torch.Generator().manual_seed(3),
                                        dtype=torch.float64))
    fine = reference_solution(model, x, kind, 160)
    err = [rms(reference_solution(model, x, kind, n), fine) for n in (10, 20, 40)]
    assert err[0] > err[1] > err[2]
    assert err[2] < 1e-3


def test_baselines_are_the_hosts_own_functions():
    for name in field.DETERMINISTIC + field.STOCHASTIC + field.GUIDED_DETERMINISTIC:
        assert sampler_fn(name) is comfy.samplers.sampler_object(name).sampler_function, name
    assert sampler_fn("ipndm_v") is comfy.k_diffusion.sampling.sample_ipndm_v
    k_diffusion = comfy.k_diffusion.sampling
    assert sampler_fn("gradient_estimation") is k_diffusion.sample_gradient_estimation
    assert sampler_fn("uni_pc") is comfy.extra_samplers.uni_pc.sample_unipc
    assert sampler_fn("dpmpp_2m_sde") is comfy.k_diffusion.sampling.sample_dpmpp_2m_sde


def test_every_host_sampler_is_placed():
    groups = {name: classify(name) for name in field.host_sampler_names()}
    assert set(groups) >= {"ipndm", "ipndm_v", "deis", "gradient_estimation", "lms",
                           "res_multistep", "uni_pc", "uni_pc_bh2", "dpmpp_2m", "heun", "euler",
                           "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde",
                           "er_sde", "res_multistep_ancestral", "sa_solver"}
    run = [n for n, g in groups.items() if not g.startswith("not run")]
    assert len(run) >= 35, groups
    assert not any(g.startswith("not run: unknown") for g in groups.values()), groups
    # a newer host's name this table does not know: reported, not an error
    assert classify("a_sampler_from_the_future").startswith("not run: unknown")


def test_host_model_carries_real_model_sampling():
    import comfy.model_sampling

    flow = field.HostModel(lambda x, s, **_: x, flow=True)
    assert isinstance(flow.inner_model.inner_model.model_sampling, comfy.model_sampling.CONST)
    ve = field.HostModel(lambda x, s, **_: x, flow=False).inner_model.model_patcher
    assert isinstance(ve.get_model_object("model_sampling"), comfy.model_sampling.EPS)


def test_nfe_is_counted_and_schedules_follow_ksampler():
    assert [nfe_of("euler", n) for n in (1, 3, 8)] == [1, 3, 8]
    assert nfe_of("heun", 3) == 5 and steps_for_nfe("heun", 6) == 3
    assert nfe_of("dpmpp_sde", 4) == 7 and nfe_of("seeds_3", 4) == 10
    # KSampler runs dpm_2 / uni_pc on steps + 1 sigmas without the second-to-last one
    plain, discarded = sigmas_for("euler", "karras", 5), sigmas_for("uni_pc", "karras", 5)
    assert len(plain) == len(discarded) == 6 and not torch.equal(plain, discarded)
    assert discarded[-1] == 0 and discarded[-2] == sigmas_for("euler", "karras", 6)[-3]


@pytest.mark.parametrize("name", field.DETERMINISTIC + ("lml_euler", "lml_dpmpp_2m"))
@pytest.mark.parametrize("kind", ["karras", "flow"])
def test_deterministic_samplers_count_nfe_honestly_and_converge(name, kind):
    mix = mixture_2d()
    model = MixtureModel(mix, kind == "flow")
    x = initial_noise(kind, torch.randn(32, 2, generator=torch.Generator().manual_seed(4),
                                        dtype=torch.float64))
    ref = reference_solution(model, x, kind, 40)
    errors = []
    for nfe in (10, 40):
        out, calls = run_sampler(model, x, kind, name, nfe)
        assert calls == nfe_of(name, steps_for_nfe(name, nfe)) <= nfe
        errors.append(rms(out, ref))
    assert errors[1] < errors[0]


@pytest.mark.parametrize("name", field.STOCHASTIC + ("lml_euler_ancestral",))
def test_stochastic_samplers_are_seeded_per_slice(name):
    mix = mixture_2d()
    model = MixtureModel(mix, False)
    x = initial_noise("karras", torch.randn(16, 2, generator=torch.Generator().manual_seed(5),
                                            dtype=torch.float64))
    first, calls = run_sampler(model, x, "karras", name, 10, seed=1)
    again, _ = run_sampler(model, x, "karras", name, 10, seed=1)
    other, _ = run_sampler(model, x, "karras", name, 10, seed=2)
    assert calls <= 10 and torch.isfinite(first).all()
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_quick_benchmark_writes_its_table(tmp_path):
    from bench.run import main

    main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "results.md").read_text()
    assert "**mix2d / karras** (rms)" in text and "| lml_euler |" in text
    assert "**digits cfg 3 / flow** (sw2; floor" in text and "| euler_cfg_pp |" in text
    data = json.loads((tmp_path / "results.json").read_text())
    deterministic = {r["sampler"] for r in data["deterministic"]}
    stochastic = {r["sampler"] for r in data["stochastic"]}
    assert {"ipndm", "ipndm_v", "deis", "gradient_estimation", "lms", "res_multistep", "uni_pc",
            "uni_pc_bh2", "dpmpp_2m", "heun", "euler", "lml_euler", "lml_dpmpp_2m"} <= deterministic
    assert {"euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "er_sde",
            "lml_euler_ancestral"} <= stochastic
    assert all(r["rms"] >= 0 and r["nfe"] <= r["nfe_budget"] for r in data["deterministic"])
    # the best built-in is the best (sampler, scheduler) pair, chosen at the smoke run's first
    # budget; every host scheduler is placed on both model_samplings
    best_line = next(line for line in text.splitlines() if line.startswith("| *best pair"))
    assert any(f" {name} + {scheduler} " in best_line for name in field.DETERMINISTIC
               for scheduler in comfy.samplers.SCHEDULER_NAMES), best_line
    for rows in (data["deterministic"], data["stochastic"]):
        assert {r["nfe_budget"] for r in rows if r["scheduler"]} == {rows[0]["nfe_budget"]}
    assert set(data["meta"]["host_schedulers"]["flow"]) == set(comfy.samplers.SCHEDULER_NAMES)
    assert data["pair_selection"]["stochastic"][0]["pairs"] > 100
    assert all(r["sw2"] > 0 and r["sw2_min"] <= r["sw2"] <= r["sw2_max"]
               for r in data["stochastic"])


def test_rotation_study_ab2_comparison_is_second_order():
    # docs/bench/rotation.md argues with an AB2 step on Euler's direction as the second-order
    # yardstick; it must be one: doubling the steps cuts its error ~4x, Euler's ~2x.
    from bench.common import schedule
    from bench.exact import mixture_64d
    from bench.rotation import ab2_direction

    model = MixtureModel(mixture_64d(), False)
    x = initial_noise("karras", torch.randn(64, 64, generator=torch.Generator().manual_seed(6),
                                            dtype=torch.float64))
    ref = reference_solution(model, x, "karras", 200)

    def error(fn, steps):
        return rms(fn(model, x, schedule("karras", steps)), ref)

    ab2 = [error(ab2_direction, n) for n in (40, 80)]
    euler = [error(sampler_fn("euler"), n) for n in (40, 80)]
    assert ab2[0] / ab2[1] > 3.0
    assert 1.5 < euler[0] / euler[1] < 2.5
    assert ab2[1] < euler[1]


def test_rotation_study_writes_its_table(tmp_path):
    from bench.rotation import main

    main(["--samples", "64", "--ref-steps", "20", "--data", "mix2d", "--out", str(tmp_path)])
    text = (tmp_path / "rotation.md").read_text()
    assert "| lml_euler adaptive, omega 0.75 (issue 7) | " in text
    assert "**mix2d / flow**" in text and "| AB2 direction, omega 0.75 (not LM) | " in text
