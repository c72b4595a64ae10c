# Shared by scripts/install_host.sh and scripts/test.sh (sourced, not run): where a host lives.
#
# The default host is ComfyUI 0.3.75 from PyPI in .host/ (or $LML_HOST_DIR). A host built from a
# ComfyUI source tree or tarball (LML_COMFY_SRC) lives in .host-<its version>/, so hosts of
# different versions sit side by side.

# The ComfyUI version of a source tree or tarball (its comfyui_version.py), or of a host's
# installed tree ($HOST/ComfyUI).
comfy_src_version() {
  local src="$1" text
  if [ -d "$src" ]; then
    text="$(cat "$src/comfyui_version.py" 2>/dev/null)"
  else
    text="$(tar -xzOf "$src" --wildcards '*comfyui_version.py' 2>/dev/null | head -n 5)"
  fi
  sed -nE 's/^__version__ *= *"([^"]+)".*/\1/p' <<<"$text" | head -n 1
}

# The folder of the host built from source $2 under the repository root $1: .host-<version>.
host_dir_for() {
  local root="$1" src="$2" version
  version="$(comfy_src_version "$src")"
  if [ -z "$version" ]; then
    echo "host: no comfyui_version.py in $src" >&2
    return 1
  fi
  echo "$root/.host-$version"
}
