"""Quality benchmark of the LML samplers (python -m bench), the parameter study
(python -m bench.study) and the rotation study (python -m bench.rotation).

Not shipped inside lml_core: it uses lml_core's public API only, and needs torch, numpy,
matplotlib and scikit-learn.  The built-in samplers it measures are the installed host's own
(bench/field.py imports comfy from .host/ComfyUI); everything else is plain torch."""
