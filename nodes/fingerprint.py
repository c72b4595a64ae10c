"""A digest of everything that decides what a ComfyUI model returns: the calibration cache's key.

``digest(*values)`` walks values as the host stores them.  Tensors: shape, dtype and a strided
sample of the values (hashing every weight would cost seconds per run).  Containers: their
items (dict and set items in digest order, so insertion order and hash seeds do not matter).
nn.Modules: class, scalar settings and weights.  A ModelPatcher: its weights as loaded from disk
(the host patches the loaded weights in place and keeps the originals aside), every weight
patch (LoRA adapters included), object patch, wrapper, callback and model_options hook.
ControlNets: everything but what sampling sets and clears (the resized hint).  Functions: name,
code (two lambdas of one scope share their name), defaults and closure; bound methods: their
``self``; other objects: their attributes.

What cannot be read raises Unfingerprintable: a C object whose state has no attributes to read,
nesting deeper than MAX_DEPTH, more than MAX_OBJECTS objects.  The cache is then not used:
slower, never another model's result.  Each object is digested once (a Merkle hash), so an
object reached twice weighs the same as two equal copies, and a cycle is cut where it closes.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import types

import comfy.controlnet
import comfy.model_patcher
import torch

SAMPLE = 64  # values sampled per tensor
MAX_DEPTH = 40  # levels of nesting followed (a ControlNet chain costs 2 per link)
MAX_OBJECTS = 200_000  # a closure that reaches the whole server is not read for a second

SCALARS = (type(None), bool, int, float, complex, str, bytes)
# Values whose repr is their whole state.
NAMED = (torch.device, torch.dtype, torch.layout, torch.memory_format, range, slice,
         type(Ellipsis), type(NotImplemented))
# Parts of a ModelPatcher that change what the model returns (not its load state or uuids).
PATCHER_PARTS = ("patches", "object_patches", "weight_wrapper_patches", "model_options",
                 "wrappers", "callbacks", "attachments", "additional_models", "injections")
# What sampling sets on a ControlNet and cleanup clears; control_model is read through
# control_model_wrapped (its patcher) where there is one.
CONTROL_STATE = frozenset({"cond_hint", "extra_concat", "timestep_range",
                           "model_sampling_current", "control_input"})
# Scalar attributes ComfyUI sets on modules while loading them.
MODULE_STATE = frozenset({"training", "model_loaded_weight_memory", "lowvram_patch_counter",
                          "model_lowvram", "model_offload_buffer_memory", "skip_injection"})
BUILTINS = (types.BuiltinFunctionType, types.MethodWrapperType)
DESCRIPTORS = (types.MethodDescriptorType, types.WrapperDescriptorType,
               types.ClassMethodDescriptorType)


class Unfingerprintable(Exception):
    """Something that decides the output cannot be read; the message says what."""


def qualname(obj) -> str:
    # Never a repr: a default one holds the object's address, another in every process.
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None)}.{name}"


def digest(*values) -> str:
    return _Walker().digest(values, 0).hex()


class _Walker:
    def __init__(self):
        self.done = {}  # id -> digest of the objects read so far
        self.path = {}  # id -> depth of the objects being read (a cycle closes on one)
        self.alive = []  # the objects read, kept so that no id is reused meanwhile

    def digest(self, value, depth) -> bytes:
        if isinstance(value, enum.Enum):
            return f"E{qualname(type(value))}.{value.name}".encode()
        if isinstance(value, SCALARS):
            return f"{type(value).__name__}:{value!r}".encode()
        if isinstance(value, NAMED):
            return f"{type(value).__name__}:{value!r}".encode()
        if isinstance(value, (type, types.ModuleType)):
            return f"C{qualname(value) if isinstance(value, type) else value.__name__}".encode()
        key = id(value)
        if key in self.done:
            return self.done[key]
        if key in self.path:
            return f"cycle{depth - self.path[key]}".encode()
        if depth > MAX_DEPTH:
            raise Unfingerprintable(f"objects nested deeper than {MAX_DEPTH} levels "
                                    f"(at {qualname(type(value))})")
        if len(self.done) >= MAX_OBJECTS:
            raise Unfingerprintable(f"more than {MAX_OBJECTS} objects to read")
        self.path[key] = depth
        try:
            h = hashlib.sha256(qualname(type(value)).encode())
            self.read(value, depth + 1, h)
        finally:
            del self.path[key]
        self.done[key] = h.digest()
        self.alive.append(value)
        return self.done[key]

    def add(self, h, value, depth):
        part = self.digest(value, depth)
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)

    def read(self, value, depth, h):
        if torch.is_tensor(value):
            h.update(tensor_sample(value))
        elif type(value).__module__ == "numpy":
            self.add(h, numpy_tensor(value), depth)
        elif isinstance(value, dict):
            items = [(self.digest(k, depth), v) for k, v in value.items()]
            for k, v in sorted(items, key=_first):
                h.update(k)
                self.add(h, v, depth)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.add(h, item, depth)
        elif isinstance(value, (set, frozenset)):
            for part in sorted(self.digest(item, depth) for item in value):
                h.update(part)
        elif isinstance(value, comfy.model_patcher.ModelPatcher):
            self.patcher(value, depth, h)
        elif isinstance(value, comfy.controlnet.ControlBase):
            skip = CONTROL_STATE | ({"control_model"} if getattr(
                value, "control_model_wrapped", None) is not None else set())
            self.add(h, {k: v for k, v in vars(value).items() if k not in skip}, depth)
        elif isinstance(value, torch.nn.Module):
            self.module(value, depth, h)
        elif isinstance(value, types.FunctionType):
            cells = [_cell(c) for c in value.__closure__ or ()]
            self.add(h, (qualname(value), value.__code__, value.__defaults__,
                         value.__kwdefaults__, cells, vars(value)), depth)
        elif isinstance(value, types.CodeType):
            self.add(h, (value.co_code, value.co_consts, value.co_names), depth)
        elif isinstance(value, types.MethodType):
            self.add(h, (value.__func__, value.__self__), depth)
        elif isinstance(value, functools.partial):
            self.add(h, (value.func, value.args, value.keywords), depth)
        elif isinstance(value, BUILTINS):
            owner = getattr(value, "__self__", None)  # a module or class: a plain function
            stateless = owner is None or isinstance(owner, (type, types.ModuleType))
            self.add(h, (qualname(value), None if stateless else owner), depth)
        elif isinstance(value, DESCRIPTORS):
            h.update(f"{qualname(value.__objclass__)}.{value.__name__}".encode())
        else:
            self.add(h, attributes(value), depth)

    def module(self, module, depth, h):
        for name, sub in module.named_modules():
            settings = {k: v for k, v in vars(sub).items() if isinstance(v, SCALARS)
                        and not k.startswith(("_", "comfy_", "prev_comfy_"))
                        and k not in MODULE_STATE}
            self.add(h, (name, qualname(type(sub)), settings), depth)
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor_sample(tensor))

    def patcher(self, patcher, depth, h):
        model = patcher.model
        backup = getattr(patcher, "backup", {})
        hook_backup = getattr(patcher, "hook_backup", None) or {}
        for name, tensor in model.state_dict().items():
            if name in backup:  # loaded with its patches applied: read the original
                tensor = getattr(backup[name], "weight", backup[name])
            elif name in hook_backup:
                tensor = hook_backup[name][0]
            h.update(name.encode())
            h.update(tensor_sample(tensor))
        try:
            sampling = patcher.get_model_object("model_sampling")
        except AttributeError:  # a ControlNet's or VAE's patcher
            sampling = None
        parts = [getattr(model, "model_type", None), getattr(model, "latent_format", None),
                 sampling, *(getattr(patcher, part, None) for part in PATCHER_PARTS)]
        self.add(h, parts, depth)


def tensor_sample(tensor) -> bytes:
    """sha256 of the shape, dtype and SAMPLE evenly strided values."""
    try:
        flat = tensor.detach()
        flat = torch.view_as_real(flat) if flat.is_complex() else flat
        flat = flat.reshape(-1)
        stride = max(1, flat.numel() // SAMPLE)
        values = flat[::stride][:SAMPLE].to(device="cpu", dtype=torch.float64).numpy()
    except (RuntimeError, NotImplementedError, TypeError) as error:
        raise Unfingerprintable(f"a {tensor.dtype} tensor on {tensor.device} could not be "
                                f"sampled ({error})") from None
    head = f"T{tuple(tensor.shape)}{tensor.dtype}".encode()
    return hashlib.sha256(head + values.tobytes()).digest()


def numpy_tensor(value):
    try:
        return torch.as_tensor(value)
    except (TypeError, RuntimeError) as error:
        raise Unfingerprintable(f"a numpy {type(value).__name__} ({error})") from None


def attributes(value) -> dict:
    """An object's attributes (``__dict__`` and ``__slots__``); Unfingerprintable when it has
    neither (its state lives in C, out of reach)."""
    state = getattr(value, "__dict__", None)
    found = isinstance(state, dict)
    state = dict(state) if found else {}
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                state[name] = getattr(value, name)
                found = True
    if not found:
        raise Unfingerprintable(f"{qualname(type(value))} has no attributes to read (its "
                                "state is C-implemented)")
    return state


class _EmptyCell:
    pass


def _cell(cell):
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return _EmptyCell


def _first(item):
    return item[0]
