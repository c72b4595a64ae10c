"""In-process tests: ComfyUI imported from .host/ComfyUI (CPU), the pack loaded the way ComfyUI
loads a custom node package, and the random-weight test checkpoint as a real ModelPatcher."""

import importlib.util
import itertools
import sys

import pytest
import torch

from harness import comfy_host
from harness.comfy_host import ROOT

if not comfy_host.COMFY_DIR.joinpath("main.py").exists():
    raise pytest.UsageError("the ComfyUI host is missing: run scripts/install_host.sh "
                            "(scripts/test.sh does this)")
comfy_host.import_comfy()

# One thread, as the server gets (OMP_NUM_THREADS=1): on a busy 2-core machine OpenMP's
# spinning threads make these small models ~8x slower.
torch.set_num_threads(1)


_loads = itertools.count()


def load_pack(module_name):
    """Import the repository as a custom node package named ``module_name`` plus a counter (as
    ComfyUI's nodes.load_custom_node does with each custom_nodes folder: spec_from_file_location
    on the package's __init__.py); every call is a fresh load, like a second copy of the pack."""
    module_name = f"{module_name}_{next(_loads)}"
    spec = importlib.util.spec_from_file_location(
        module_name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="load_pack")
def load_pack_fixture():
    return load_pack


@pytest.fixture(scope="session")
def pack():
    return load_pack("comfyui_lml_under_test")


@pytest.fixture
def host_call():
    """``host_call(node, "validate_inputs", **inputs)``: a V3 node's method called the way
    ComfyUI's execution calls it, on a locked clone of the class (where setting a class
    attribute raises)."""
    from comfy_api.internal import make_locked_method_func

    def call(node, method, **inputs):
        return make_locked_method_func(node, method, node.PREPARE_CLASS_CLONE({}))(**inputs)

    return call


def _load_checkpoint(path):
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, embedding_directory=None)
    return model, clip, vae


@pytest.fixture(scope="session")
def sd15():
    """(model patcher, clip, vae) of the random-weight test checkpoint, loaded once."""
    return _load_checkpoint(comfy_host.ensure_checkpoint())


@pytest.fixture(scope="session")
def digits_sd15():
    """(model patcher, clip, vae) of the trained digits checkpoint, loaded once."""
    return _load_checkpoint(comfy_host.ensure_digits_checkpoint())


@pytest.fixture(scope="session")
def conds(sd15):
    _, clip, _ = sd15
    encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))
    return encode("a red house by a lake"), encode("blurry")


@pytest.fixture
def sample_custom(sd15, conds):
    """``sample_custom(sampler, steps=5, seed=3, scheduler="karras")``: a [2, 4, 8, 8] latent
    sampled with the SAMPLER object through comfy.sample.sample_custom (the scheduler's sigmas,
    cfg 5) on the test checkpoint."""
    import comfy.sample
    import comfy.samplers

    def sample(sampler, steps=5, seed=3, scheduler="karras"):
        model = sd15[0]
        latent = torch.zeros([2, 4, 8, 8])
        noise = comfy.sample.prepare_noise(latent, seed)
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"),
                                                 scheduler, steps)
        return comfy.sample.sample_custom(model, noise, 5.0, sampler, sigmas, *conds, latent,
                                          disable_pbar=True, seed=seed)

    return sample


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """ComfyUI's user folder (where LML Calibrate caches) in a fresh folder per test module."""
    import folder_paths

    path = tmp_path_factory.mktemp("user")
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(path))
    yield path
    folder_paths.set_user_directory(old)


@pytest.fixture
def counting():
    """``counting(model)``: (a clone of ``model`` recording the latents of every UNet call, that
    record)."""

    def clone(model):
        seen = []
        counted = model.clone()
        counted.set_model_unet_function_wrapper(lambda apply, args: seen.append(
            args["input"].shape[0]) or apply(args["input"], args["timestep"], **args["c"]))
        return counted, seen

    return clone


TiB = 2**40


@pytest.fixture
def little_memory(monkeypatch):
    """``little_memory(free)``: ComfyUI's model management with memory_required 1 TiB per latent
    and ``free`` TiB free (get_free_memory).  Units this large leave what else reads the free
    memory (sub-quadratic attention's slicing, model loading) as it was."""
    import comfy.model_base
    import comfy.model_management

    def apply(free):
        amount = free * TiB
        monkeypatch.setattr(comfy.model_base.BaseModel, "memory_required",
                            lambda self, input_shape, cond_shapes=None: input_shape[0] * TiB)
        monkeypatch.setattr(comfy.model_management, "get_free_memory",
                            lambda dev=None, torch_free_too=False:
                            (amount, amount) if torch_free_too else amount)

    return apply


@pytest.fixture
def user_folder(tmp_path):
    """``user_folder(name)``: ComfyUI's user folder (the calibration cache) moved to a fresh
    folder ``name``; restored after the test."""
    import folder_paths

    old = folder_paths.get_user_directory()

    def move(name):
        (tmp_path / name).mkdir(exist_ok=True)
        folder_paths.set_user_directory(str(tmp_path / name))

    yield move
    folder_paths.set_user_directory(old)
