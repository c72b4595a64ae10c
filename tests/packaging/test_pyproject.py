"""The registry metadata: pyproject.toml parses and carries what the Comfy Registry reads."""

import re
import subprocess
from pathlib import Path

import pytest

from harness import comfy_host

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_project_table_has_the_registry_fields():
    project = PYPROJECT["project"]
    assert project["name"] == "comfyui-lml"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert len(project["description"]) > 40
    assert (ROOT / project["license"]["file"]).is_file()
    assert project["urls"]["Repository"].startswith("https://")
    assert "torch" not in " ".join(project.get("dependencies", []))  # ComfyUI owns torch


# What the pack does today, by the node names users see (the registry shows the description).
NODE_NAMES = ("KSampler (LML)", "Sampler LML Wrap", "LML Calibrate", "Sampler LML Calibrated",
              "LML Sampler Lab", "LML Compare")


def test_description_names_what_the_pack_does():
    description = PYPROJECT["project"]["description"]
    missing = [name for name in NODE_NAMES if name not in description]
    assert not missing, f"pyproject.toml's description does not name {missing}"


def test_tool_comfy_table_has_the_registry_fields():
    comfy = PYPROJECT["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["Icon"].startswith("https://") and (ROOT / "web" / "icon.svg").is_file()
    for folder in comfy["includes"]:
        assert (ROOT / folder).is_dir(), folder
    # WEB_DIRECTORY registers web/; a [tool.comfy] web key would register it a second time.
    assert "web" not in comfy


def test_license_is_gpl3_like_comfyui():
    text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text


def test_changelog_mentions_the_current_version():
    assert f"[{PYPROJECT['project']['version']}]" in (ROOT / "CHANGELOG.md").read_text()


def test_comfyui_reads_the_pack_config():
    """ComfyUI's own parser (comfy_config, used when the pack loads) accepts the file."""
    host, python = comfy_host.COMFY_DIR, comfy_host.HOST_PYTHON
    if not python.exists():
        pytest.fail("the ComfyUI host is missing: run scripts/install_host.sh")
    code = ("import sys; from comfy_config import config_parser as c;"  # run in the host tree
            "cfg = c.extract_node_configuration(sys.argv[1]);"
            "print(cfg.project.name, cfg.tool_comfy.publisher_id, cfg.tool_comfy.display_name,"
            " cfg.tool_comfy.web)")
    out = subprocess.run([str(python), "-c", code, str(ROOT)], cwd=host, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split("\n")[-2]
    comfy = PYPROJECT["tool"]["comfy"]
    assert out == f"comfyui-lml {comfy['PublisherId']} {comfy['DisplayName']} None", out
