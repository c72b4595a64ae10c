"""The real-host test harness: a ComfyUI 0.3.75 host (scripts/install_host.sh), its random-weight
test checkpoint and headless server (``comfy_host``), the example workflows' definitions and
format conversion (``workflows``), their thumbnails (``thumbnails``), the example runner
(``examples``) and the in-host timing (``host_timing``).  Used by the tests and by the thin
entry points in scripts/; never shipped to users' ComfyUI (nothing here is imported by the pack).
"""
