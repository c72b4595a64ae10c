"""Quality benchmark of the LML samplers (python -m lml_core.bench) and the parameter study
(python -m lml_core.bench.study).  Needs torch, numpy, matplotlib, scikit-learn; never comfy."""
