"""The calibrated sampler against the host: with zero corrections it is ComfyUI's own euler,
ipndm and ipndm_v (the same method), on both schedules."""

import pytest
import torch

from bench import field
from bench.common import schedule
from bench.exact import MixtureModel, mixture_64d
from lml_core import Calibration, sample_lml_calibrated


@pytest.mark.parametrize("kind", ["karras", "flow"])
@pytest.mark.parametrize("steps", [3, 6, 10])
@pytest.mark.parametrize("base", ["euler", "ipndm", "ipndm_v"])
def test_zero_corrections_reproduce_the_hosts_sampler(kind, steps, base):
    flow = kind == "flow"
    model = MixtureModel(mixture_64d(), flow)
    x = torch.randn(8, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x * (1.0 if flow else 80.0)
    sigmas = schedule(kind, steps).double()
    host = field.host_function(base)(field.HostModel(model, flow), x.clone(), sigmas.clone(),
                                     disable=True)
    zero = Calibration(base=base, sigmas=sigmas.tolist(), corrections=[[0.0]] * steps,
                       fitted_on={"steps": steps, "sigma_max": float(sigmas[0]),
                                  "sigma_min": float(sigmas[-2])})
    ours = sample_lml_calibrated(field.HostModel(model, flow), x.clone(), sigmas,
                                 calibration=zero)
    # The same arithmetic up to the order of float64 additions.
    assert torch.allclose(ours, host, rtol=0, atol=1e-12 * float(host.abs().max()))
