"""Reliability against the real server: extreme and hostile inputs, precisions, a long mixed
queue with two clients and an interruption.  docs/reliability.md tabulates what users get."""

import io
import json
import math
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from harness import comfy_host, workflows


def txt2img(seed, **lml):
    """The txt2img example as the tests run it, with KSamplerLML inputs overridden."""
    prompt = workflows.smoke(workflows.load_api("lml_txt2img_ksampler_lml"))
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSamplerLML")
    sampler["inputs"]["seed"] = seed
    for key, value in lml.items():
        if key == "batch_size":
            next(n for n in prompt.values()
                 if n["class_type"] == "EmptyLatentImage")["inputs"]["batch_size"] = value
        else:
            sampler["inputs"][key] = value
    return prompt


def images(server, entry):
    return [Image.open(io.BytesIO(server.view(info)))
            for info in comfy_host.output_files(entry, "images")]


def error_message(entry):
    for kind, data in entry["status"]["messages"]:
        if kind == "execution_error":
            return f'{data["exception_type"]}: {data["exception_message"]}'
    return ""


@pytest.mark.parametrize("override", [
    {"rank": 16},                       # more history than steps: the history never fills
    {"damping": 0.001}, {"damping": 10000.0},
    {"kappa": 0.0}, {"kappa": 1.0},
    {"start_percent": 0.5, "end_percent": 0.5},   # empty range: the plain solver
    {"steps": 1}, {"denoise": 0.0}, {"denoise": 1.0}, {"batch_size": 8},
    {"solver": "euler_ancestral", "eta": 0.0}, {"solver": "euler_ancestral", "s_noise": 0.0},
    {"damping_mode": "adaptive", "omega": 0.0}, {"damping_mode": "adaptive", "omega": 2.0},
    {"damping_mode": "absolute", "damping": 0.001},
])
def test_extreme_but_valid_inputs_work(server, fresh_seed, override):
    entry = server.run(txt2img(fresh_seed(), **override))
    pictures = images(server, entry)
    assert len(pictures) == override.get("batch_size", 1)
    for picture in pictures:
        assert picture.size == (64, 64)
        assert picture.getextrema() != ((0, 0), (0, 0), (0, 0))


@pytest.mark.parametrize("override, word", [
    ({"damping": 1e30}, "damping"), ({"damping": float("inf")}, "damping"),
    ({"kappa": -0.1}, "kappa"), ({"kappa": 1.5}, "kappa"),
    ({"omega": 5.0}, "omega"), ({"rank": 17}, "rank"), ({"eta": -1.0}, "eta"),
    ({"steps": 0}, "steps"), ({"denoise": 1.5}, "denoise"), ({"solver": "magic"}, "solver"),
    ({"damping_mode": "loose"}, "damping_mode"), ({"scheduler": "nope"}, "scheduler"),
])
def test_out_of_bounds_inputs_are_validation_errors(server, fresh_seed, override, word):
    with pytest.raises(comfy_host.PromptRejected) as rejected:
        server.queue(txt2img(fresh_seed(), **override))
    assert word in json.dumps(rejected.value.response["node_errors"])


def test_non_finite_setting_is_an_execution_error_and_the_server_goes_on(server, fresh_seed):
    # JSON NaN passes ComfyUI's bounds check (NaN compares false); lml_core names it at run time.
    entry = server.run(txt2img(fresh_seed(), kappa=float("nan")), check=False)
    assert entry["status"]["status_str"] == "error"
    assert "kappa must be a finite number" in error_message(entry)
    assert server.run(txt2img(fresh_seed()))["status"]["status_str"] == "success"


@pytest.mark.parametrize("override, message", [
    ({"damping": float("nan")}, "damping must be a number, got nan"),
    ({"cfg": float("nan")}, "cfg must be a number, got nan"),
    ({"cfg": float("inf")}, "cfg must be between 0 and 100, got inf"),
])
def test_non_finite_damping_or_cfg_is_a_validation_error(server, fresh_seed, override, message):
    # damping (with its -1 = auto) and cfg are checked by the node's own validate_inputs, NaN
    # included (ComfyUI's own bounds check lets NaN through).
    with pytest.raises(comfy_host.PromptRejected) as rejected:
        server.queue(txt2img(fresh_seed(), **override))
    assert message in json.dumps(rejected.value.response["node_errors"])


def test_non_finite_latent_is_an_execution_error(server, fresh_seed):
    import numpy as np
    from safetensors.numpy import save_file

    latent = np.zeros((1, 4, 8, 8), dtype=np.float32)
    latent[0, 1, 2, 3] = np.nan
    latent[0, 2, 4, 5] = np.inf
    name = f"lml_nan_{fresh_seed()}.latent"
    save_file({"latent_tensor": latent, "latent_format_version_0": np.zeros(1, np.float32)},
              str(Path(server.base_dir) / "input" / name))
    prompt = txt2img(fresh_seed())
    sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "KSamplerLML")
    prompt["90"] = {"class_type": "LoadLatent", "inputs": {"latent": name}}
    prompt[sampler_id]["inputs"]["latent_image"] = ["90", 0]
    prompt[sampler_id]["inputs"]["denoise"] = 0.5
    entry = server.run(prompt, check=False)
    assert entry["status"]["status_str"] == "error"
    assert "NaN or inf" in error_message(entry)
    assert server.run(txt2img(fresh_seed()))["status"]["status_str"] == "success"


def test_another_server_on_the_port_is_not_taken_for_ours(tmp_path):
    """A server of another test session that holds the port first (both hosts' suites run
    side by side in CI) answers /system_stats there too; ComfyServer waits for its own
    process, which cannot bind, and starts on another port."""
    import http.server

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"system": {"argv": ["main.py", "--base-directory", "/else"]}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    taken = comfy_host.free_port()
    other = http.server.HTTPServer(("127.0.0.1", taken), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with comfy_host.ComfyServer(base_dir=tmp_path / "base", port=taken) as host:
            assert host.port != taken
            argv = host.get_json("/system_stats")["system"]["argv"]
            assert str(tmp_path / "base") in argv
            assert host.run(txt2img(11))["status"]["status_str"] == "success"
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.parametrize("flag", ["--bf16-unet", "--fp16-unet"])
def test_reduced_precision_unet_on_cpu(tmp_path, flag):
    with comfy_host.ComfyServer(base_dir=tmp_path, extra_args=[flag]) as host:
        entry = host.run(txt2img(7), timeout=600)
        picture = images(host, entry)[0]
        assert picture.getextrema() != ((0, 0), (0, 0), (0, 0))
        log = host.log_tail(20000)
        assert ("bfloat16" if "bf16" in flag else "float16") in log


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


RSS_GROWTH_BOUND_MB = 300


@pytest.mark.longrun
def test_long_mixed_queue_two_clients_with_an_interruption(server, fresh_seed):
    """100 prompts (LML and built-in samplers), two concurrent clients, one prompt interrupted
    mid-sampling: all others succeed, outputs are deterministic per seed, RSS stays bounded."""
    kinds = [
        {"solver": "euler"}, {"solver": "dpmpp_2m"},
        {"solver": "euler_ancestral"}, {"builtin": "euler"}, {"builtin": "lml_dpmpp_2m"},
    ]

    def prompt_for(seed, kind, tag):
        prompt = txt2img(seed)
        sampler_id = next(k for k, n in prompt.items() if n["class_type"] == "KSamplerLML")
        node = prompt[sampler_id]
        if "builtin" in kind:
            common = {k: node["inputs"][k] for k in ("model", "seed", "steps", "cfg", "scheduler",
                                                     "positive", "negative", "latent_image",
                                                     "denoise")}
            prompt[sampler_id] = {"class_type": "KSampler",
                                  "inputs": {**common, "sampler_name": kind["builtin"]}}
        else:
            node["inputs"]["solver"] = kind["solver"]
        save = next(n for n in prompt.values() if n["class_type"] == "SaveImage")
        save["inputs"]["filename_prefix"] = f"longrun/{tag}"
        return prompt

    # 48 seeds, each run twice (once per client, in opposite orders), plus 3 warm-up prompts
    # and the long prompt that gets interrupted: 100 prompts.
    seeds = [fresh_seed() for _ in range(48)]
    jobs = [(seed, kinds[i % len(kinds)]) for i, seed in enumerate(seeds)]
    for i in range(3):
        server.run(prompt_for(fresh_seed(), kinds[i], f"warm{i}"))
    rss_before = rss_mb(server.process.pid)

    results = {"a": {}, "b": {}}
    failures = []

    def client(name, order):
        host = comfy_host.ComfyServer(port=server.port)  # a second HTTP client, same server
        host.client_id = name
        ids = [(seed, host.queue(prompt_for(seed, kind, f"{name}{seed}"))) for seed, kind in order]
        for seed, prompt_id in ids:
            try:
                entry = host.wait(prompt_id, timeout=900)
                png = host.view(comfy_host.output_files(entry, "images")[0])
                # pixels, not file bytes: the PNG's metadata holds the (per-client) prompt
                results[name][seed] = Image.open(io.BytesIO(png)).tobytes()
            except Exception as error:  # noqa: BLE001 - collected and asserted below
                failures.append((name, seed, repr(error)[:300]))

    long_prompt = prompt_for(fresh_seed(), kinds[0], "interrupted")
    long_sampler = next(n for n in long_prompt.values() if n["class_type"] == "KSamplerLML")
    long_sampler["inputs"]["steps"] = 400
    threads = [threading.Thread(target=client, args=("a", jobs[:25])),
               threading.Thread(target=client, args=("b", list(reversed(jobs))))]
    threads[0].start()
    long_id = server.queue(long_prompt)
    threads[1].start()

    # Interrupt the long prompt once it is running (targeted: only if it is the one running).
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        running = server.get_json("/queue")["queue_running"]
        if any(item[1] == long_id for item in running):
            time.sleep(1.0)  # let it get into the sampling loop
            server.post_json("/interrupt", {"prompt_id": long_id})
            break
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=1200)
    second_half = {seed: kind for seed, kind in jobs[25:]}
    client("a", list(second_half.items()))  # client a's second batch, after the interruption

    interrupted = server.wait(long_id, check=False)
    rss_after = rss_mb(server.process.pid)
    messages = [kind for kind, _ in interrupted["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    assert failures == []
    assert set(results["a"]) == set(results["b"]) == set(seeds)
    for seed in seeds:  # deterministic per seed, whoever ran it and whatever ran before
        assert results["a"][seed] == results["b"][seed], seed
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB, (rss_before, rss_after)
    print(f"\nlong run: {2 * len(seeds) + 4} prompts, 0 failures, RSS {rss_before:.0f} MB -> "
          f"{rss_after:.0f} MB")
