"""LML Calibrate's on-disk cache: one JSON file per key under ComfyUI's user folder, so that a
restart does not refit.

A cache that hands back another model's calibration is worse than none, so the key covers all
that changes what the model returns (nodes.fingerprint: the weights, every patch and hook, the
conditioning with its ControlNets, the latent), the node's settings, this pack's version and the
calibration format.  Where something cannot be read there is no key and no cache, and the
report says why.  Files are written whole (a temporary file, then os.replace); one that cannot
be read is logged, refitted and replaced.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from ..lml_core import Calibration, calibrations_from_json, calibrations_to_json
from ..lml_core.calibration import CALIBRATION_FORMAT
from .fingerprint import Unfingerprintable, digest

FOLDER = "lml_calibrations"
# Bump when what the key covers changes, or what a default it leaves out means (3: the
# defaults linear_fits on and trajectory 0.3; 4: every choice reads the objective, the states
# on the way included; a key of the old fit must not load).
KEY_FORMAT = "lml-calibration-cache/4"


def read_pack_version() -> str:
    """pyproject.toml's version: a new release may fit differently."""
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text("utf-8")
    except OSError:
        return "unknown"
    found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


PACK_VERSION = read_pack_version()


def key(model, positive, negative, latent, settings: dict) -> tuple[str | None, str | None]:
    """(key, None), or (None, why there is none)."""
    try:
        text = digest(KEY_FORMAT, PACK_VERSION, CALIBRATION_FORMAT, model, positive, negative,
                      latent, settings)
    except Unfingerprintable as error:
        return None, str(error)
    except RecursionError:
        return None, "objects nested too deeply to read"
    except Exception as error:  # an object that breaks while read: calibrate, do not cache
        logging.warning("comfyui-lml: could not fingerprint the model for the calibration "
                        "cache", exc_info=True)
        return None, f"the model could not be read ({type(error).__name__}: {error})"
    return text[:32], None


def path(key: str) -> Path | None:
    """The cache file of ``key``; None where the host has no user folder."""
    try:
        import folder_paths

        return Path(folder_paths.get_user_directory()) / FOLDER / f"{key}.json"
    except Exception:  # an embedded host without folder_paths
        return None


def locate(model, positive, negative, latent, settings: dict) -> tuple[Path | None, str | None]:
    """(cache file, None), or (None, the report's "not cached: ..." line)."""
    found, reason = key(model, positive, negative, latent, settings)
    if found is None:
        return None, f"not cached: {reason}"
    file = path(found)
    return file, None if file is not None else "not cached: ComfyUI has no user folder"


def load(file: Path) -> list[Calibration] | None:
    """The cached calibrations (one per step count; one step count: a list of one), or None:
    no file, or one that cannot be read (logged; the fit that follows replaces it)."""
    try:
        return calibrations_from_json(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logging.warning("comfyui-lml: the cached calibration %s cannot be read (%s); "
                        "calibrating again, the result will replace it", file, error)
        return None


def save(file: Path, calibration) -> str | None:
    """Write ``calibration`` (one, or a list: one per step count) to ``file`` whole or not at
    all; None, or the report's "not cached: ..." line."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.",
                                             suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(calibrations_to_json(calibration)
                          if isinstance(calibration, (list, tuple)) else calibration.to_json())
                out.flush()
                os.fsync(out.fileno())
            if file.is_dir() and not file.is_symlink():
                file.rmdir()  # an empty folder in the file's place; a full one stays (OSError)
            os.replace(temporary, file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        logging.warning("comfyui-lml: could not write the calibration cache %s (%s)", file,
                        error)
        return f"not cached: could not write {file} ({error})"
    return None
