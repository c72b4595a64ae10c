"""Template-browser thumbnails that load whichever way the host serves example_workflows/.

The frontend asks for ``/api/workflow_templates/<pack folder>/<name>.jpg`` beside each
``example_workflows/<name>.json``.  ComfyUI 0.3.75 (and master at the time of writing) mounts
the folder as a static route, so any file is served; a newer revision of the route
(app/custom_node_manager.py, ``GET /workflow_templates/{module_name}/{filename}``) serves
``*.json`` only, so the .jpg would 404 there.  This module registers, for this pack only, a route
for exactly those thumbnail URLs.  Custom nodes are imported before the server adds its own
routes, so where both match this one comes first; where the static mount exists it answers
first (it is added to the app earlier) with the same file.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

# Not resolved: the pack may be a symlink in custom_nodes, and the route uses the link's name.
PACK_DIR = Path(os.path.abspath(__file__)).parents[1]
EXAMPLES_DIR = PACK_DIR / "example_workflows"
THUMBNAIL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.jpg$")
_registered: set[str] = set()


def thumbnail_path(filename: str) -> Path | None:
    """The thumbnail ``filename`` in example_workflows/, or None (not a plain .jpg name, no
    such file, or a path that leaves the folder)."""
    if not THUMBNAIL.match(filename):
        return None
    path = (EXAMPLES_DIR / filename).resolve()
    if path.parent != EXAMPLES_DIR.resolve() or not path.is_file():
        return None
    return path


def register_thumbnail_route() -> bool:
    """Add the thumbnail route to the running PromptServer (once per pack folder name); False
    where there is no server (ComfyUI imported in-process, e.g. the tests)."""
    server = sys.modules.get("server")  # ComfyUI's server.py, imported before custom nodes
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None:
        return False
    from aiohttp import web

    module_name = PACK_DIR.name  # the folder name under custom_nodes, as the route uses it
    if module_name in _registered:
        return True

    async def thumbnail(request):
        path = thumbnail_path(request.match_info["filename"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": "image/jpeg"})

    try:
        instance.routes.get(f"/workflow_templates/{module_name}/{{filename}}")(thumbnail)
    except Exception as error:  # never keep the nodes from loading over a thumbnail
        logging.warning("comfyui-lml: no thumbnail route: %s", error)
        return False
    _registered.add(module_name)
    return True
