"""The LM settings as node inputs, declared once.

``LM_SETTINGS`` lists every setting a user may change on an LM node (KSampler (LML), Sampler
LML, LML Compare, Sampler LML Wrap), in the order those nodes show them, with its widget type,
bounds, tooltip and advanced flag.  From it come the V3 schema inputs (``lm_inputs``) and the
one ``LMOptions`` (plus eta / s_noise) that ``execute(..., **lm)`` hands to the sampler
(``sampler_options``, ``wrap_options``).  /object_info serves the resulting order, which is
where harness/workflows.py takes its widget order from.

Saved workflows store widget values by position, so the order is the order the inputs were
added in: ``fade`` came last and sits last (an optional input, so an API prompt saved before it
still validates), except on Sampler LML Wrap, which had it after ``damping`` from the start.

``damping`` and ``fade`` accept -1 for "auto": the solver's measured
setting (lml_core's SOLVER_DEFAULTS), which is what the solver nodes default to.  That is how
KSampler (LML)'s euler_ancestral runs with the Langevin defaults (damping 10, fade 5) while
euler keeps damping 1, fade 0: a widget cannot change its default with another widget.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..lml_core import (
    ANCESTRAL_DEFAULTS,
    DAMPING_MODES,
    SAMPLERS,
    SOLVER_DEFAULTS,
    WRAP_DEFAULTS,
    LMOptions,
    omega_widget,
)

SOLVERS = tuple(name[len("lml_"):] for name in SAMPLERS)  # ("euler", "dpmpp_2m", "euler_ancestral")
AUTO = -1.0  # the widget value of "auto" for damping, fade (and omega: lml_core's own "auto")


@dataclass(frozen=True)
class Setting:
    """One LM input: ``kind`` is io.Int, io.Float or io.Combo; ``options`` its keyword bounds;
    ``auto``: -1 means the solver's measured setting; ``positive``: a value must be > 0 (else
    >= the minimum); ``solver_only``: only on nodes with a solver (eta, s_noise)."""

    name: str
    kind: type
    options: dict
    tooltip: str
    advanced: bool = False
    auto: bool = False
    positive: bool = False
    solver_only: bool = False


FRACTION = {"min": 0.0, "max": 1.0, "step": 0.01}
NOISE = {"min": 0.0, "max": 100.0, "step": 0.01, "round": False}

LM_SETTINGS = (
    Setting("rank", io.Int, {"min": 1, "max": 16},
            tooltip="How many previous step directions form the low-rank curvature estimate. "
                    "1 is cheapest; larger ranks use more history."),
    Setting("damping", io.Float, {"min": AUTO, "max": 10000.0, "step": 0.01, "round": 0.001},
            auto=True, positive=True,
            tooltip="Levenberg-Marquardt damping lambda (> 0). Large values shrink the "
                    "correction towards the plain solver; small values trust the curvature "
                    "estimate more. -1 means auto: the solver's measured setting (1 for euler "
                    "and dpmpp_2m, 10 for euler_ancestral)."),
    Setting("kappa", io.Float, FRACTION, advanced=True,
            tooltip="Weight of the previous directions in the curvature estimate: 0 switches "
                    "the correction off (the plain solver), 1 uses the history directions "
                    "alone."),
    Setting("damping_mode", io.Combo, {"options": list(DAMPING_MODES)}, advanced=True,
            tooltip="relative: lambda = damping x the mean squared size of the history (one "
                    "setting for every model and resolution); absolute: lambda = damping; "
                    "adaptive: lambda is solved per step so that the direction turns away from "
                    "the history by omega times its angle to it."),
    Setting("omega", io.Float, {"min": -1.0, "max": 2.0, "step": 0.05}, advanced=True,
            tooltip="adaptive damping_mode only: the fraction of the angle between the "
                    "direction and the history by which the direction is turned. -1 (any "
                    "negative value) means auto: the Adams-Bashforth-2 weight "
                    "h_n / (2 h_(n-1)) from the log-SNR step sizes."),
    Setting("start_percent", io.Float, FRACTION, advanced=True,
            tooltip="Fraction of the steps after which the correction starts (0 = from the "
                    "first step). Must not be greater than end_percent."),
    Setting("end_percent", io.Float, FRACTION, advanced=True,
            tooltip="Fraction of the steps at which the correction stops (1 = until the last "
                    "step)."),
    Setting("eta", io.Float, NOISE, advanced=True, solver_only=True,
            tooltip="euler_ancestral only: amount of fresh noise per step (0 = lml euler)."),
    Setting("s_noise", io.Float, NOISE, advanced=True, solver_only=True,
            tooltip="euler_ancestral only: scale of the fresh noise."),
    Setting("fade", io.Float, {"min": AUTO, "max": 10.0, "step": 0.1}, advanced=True, auto=True,
            tooltip="How fast the correction fades as the steps get shorter: the damping grows "
                    "like h^-fade on steps shorter than 1 in log-SNR (0 = no fade). High-order "
                    "samplers are disturbed by the correction most on short steps. -1 means "
                    "auto: the solver's measured setting (0 for euler and dpmpp_2m, 5 for "
                    "euler_ancestral)."),
)
SETTINGS = {setting.name: setting for setting in LM_SETTINGS}

# The widget order of each kind of LM node (see the module docstring for why they differ).
SOLVER_NODE_ORDER = tuple(s.name for s in LM_SETTINGS)
WRAP_ORDER = ("rank", "damping", "fade", "kappa", "damping_mode", "omega", "start_percent",
              "end_percent")
APPENDED = ("fade",)  # inputs added after workflows were saved: optional on the solver nodes


def advanced(inp: io.Input) -> io.Input:
    """Mark a V3 input as advanced on every host.

    Newer hosts have an ``advanced`` option on ``io.Input`` (and raise TypeError for the keyword
    on 0.3.75, which would stop the whole pack from loading); where the attribute is missing the
    flag goes through ``extra_dict``, which ComfyUI copies into /object_info unchanged.  Either
    way the input spec carries ``"advanced": true``."""
    if hasattr(inp, "advanced"):
        inp.advanced = True
    else:
        inp.extra_dict = {**(inp.extra_dict or {}), "advanced": True}
    return inp


def widget_default(name: str, defaults: dict | None):
    """The widget default of setting ``name`` from a defaults table; ``None`` means the solver
    nodes' defaults (auto where the setting has auto)."""
    setting = SETTINGS[name]
    if name in ANCESTRAL_DEFAULTS:
        return ANCESTRAL_DEFAULTS[name]
    if defaults is None:
        if setting.auto:
            return AUTO
        defaults = SOLVER_DEFAULTS["lml_euler"]
    if name == "omega":
        return float(omega_widget(defaults["omega"]))
    if name == "rank":
        return max(1, int(defaults["rank"]))
    return defaults[name] if setting.kind is io.Combo else float(defaults[name])


def lm_inputs(order=SOLVER_NODE_ORDER, defaults: dict | None = None,
              optional=()) -> list[io.Input]:
    """The schema inputs of the settings ``order``, with defaults from ``defaults`` (None: the
    solver nodes' own, see ``widget_default``); the names in ``optional`` are optional."""
    inputs = []
    for name in order:
        setting = SETTINGS[name]
        inp = setting.kind.Input(name, default=widget_default(name, defaults),
                                 tooltip=setting.tooltip, optional=name in optional,
                                 **setting.options)
        inputs.append(advanced(inp) if setting.advanced else inp)
    return inputs


def solver_input() -> io.Input:
    return io.Combo.Input(
        "solver", options=list(SOLVERS), default=SOLVERS[0],
        tooltip="The ODE/SDE solver the LM correction is applied to: euler (first order), "
                "dpmpp_2m (DPM-Solver++(2M), second order multistep) or euler_ancestral "
                "(Langevin: adds fresh noise every step, uses eta and s_noise).")


def solver_node_inputs() -> dict[str, io.Input]:
    """The solver and every LM setting, by name, in the solver nodes' order."""
    inputs = lm_inputs(optional=APPENDED)
    return {"solver": solver_input(), **{inp.id: inp for inp in inputs}}


def lm_options(measured: dict, lm: dict) -> LMOptions:
    """One validated LMOptions from the widget values ``lm`` (by name; extra names such as eta
    are ignored): auto (-1, or missing for an appended input) damping and fade take the
    ``measured`` table's value, omega's widget -1 is "auto".  A bad value raises a ValueError
    naming it, before any model is loaded."""
    values = {}
    for name in measured:
        if name not in SETTINGS:
            continue
        value = lm.get(name)
        if SETTINGS[name].auto and (value is None or value == AUTO):
            value = measured[name]
        values[name] = value
    values["omega"] = omega_widget(values["omega"])
    return LMOptions(**values)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sampler_options(solver: str, **lm) -> dict:
    """The sampler's ``extra_options`` for ``solver`` and the widget values ``lm``: one
    validated ``LMOptions`` (``lm``), plus eta and s_noise for euler_ancestral."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    options = {"lm": lm_options(SOLVER_DEFAULTS[f"lml_{solver}"], lm)}
    if solver == "euler_ancestral":
        options.update(eta=lm["eta"], s_noise=lm["s_noise"])
    return options


def wrap_options(**lm) -> LMOptions:
    """Sampler LML Wrap's LMOptions (auto: WRAP_DEFAULTS)."""
    return lm_options(WRAP_DEFAULTS, lm)


# --------------------------------------------------------------------------------------------
# Validation before the prompt is queued (each node names only its own inputs)


def check_choice(name: str, value, choices) -> str | None:
    """None when ``value`` is one of ``choices`` or not known yet (a link), else the message.

    A V3 combo is served as ``["COMBO", {"options": [...]}]`` and ComfyUI 0.3.75 only checks
    list-typed (V1) combos, so without this an unknown value would only fail at run time."""
    if value is None or value in choices:
        return None
    shown = list(choices) if len(choices) <= 12 else f"a list of {len(choices)} names"
    return f"{name} must be one of {shown}, got {value!r}"


def check_setting(name: str, value) -> str | None:
    """None when the LM setting ``name`` may be ``value`` (or it is not known yet: a link),
    else the message.  A node that names a setting in ``validate_inputs`` makes ComfyUI skip
    its own min/max check of it, so the bounds are checked here."""
    if value is None:
        return None
    setting = SETTINGS[name]
    if not _is_number(value) or value != value:  # value != value: NaN
        return f"{name} must be a number, got {value!r}"
    if setting.auto and value == AUTO:
        return None
    low, high = setting.options["min"], setting.options["max"]
    if setting.auto:
        low = max(low, 0.0)
    if setting.positive and value <= 0:
        return f"{name} must be > 0{' (or -1: auto)' if setting.auto else ''}, got {value}"
    if not low <= value <= high:
        auto = " (or -1: auto)" if setting.auto else ""
        return f"{name} must be between {low:g} and {high:g}{auto}, got {value}"
    return None


def widget_bounds(node, name: str) -> tuple:
    """(min, max) of the number widget ``name`` as ``node``'s schema declares it, so a check
    in ``validate_inputs`` cannot drift from what the widget shows.  ``define_schema``, not
    ``GET_SCHEMA``: ComfyUI calls ``validate_inputs`` on a locked clone of the class, and
    GET_SCHEMA sets class attributes."""
    widget = next(inp for inp in node.define_schema().inputs if inp.id == name)
    return widget.min, widget.max


def check_number(node, name: str, value) -> str | None:
    """None when the number widget ``name`` of ``node`` may be ``value`` (or it is not known
    yet: a link), else the message.  ComfyUI's own bounds check lets NaN through (NaN compares
    false) and is skipped for an input that ``validate_inputs`` names, so the widget's bounds
    are checked here too (inf is out of them)."""
    if value is None:
        return None
    if not _is_number(value) or value != value:  # value != value: NaN
        return f"{name} must be a number, got {value!r}"
    low, high = widget_bounds(node, name)
    if not low <= value <= high:
        return f"{name} must be between {low:g} and {high:g}, got {value}"
    return None


def validate(choices: dict, **settings):
    """``choices``: name -> (value, allowed values); ``settings``: LM setting values by name
    (start_percent and end_percent checked as a pair too).  True, or the first message."""
    for name, (value, allowed) in choices.items():
        message = check_choice(name, value, allowed)
        if message:
            return message
    for name, value in settings.items():
        message = check_setting(name, value)
        if message:
            return message
    start, end = settings.get("start_percent"), settings.get("end_percent")
    if start is not None and end is not None and start > end:
        return f"start_percent ({start}) must not be greater than end_percent ({end})"
    return True
