import pathlib
import sys

# The repository root on sys.path, so `import lml_core` works from any test directory.
ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
