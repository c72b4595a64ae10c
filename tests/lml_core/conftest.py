import pathlib
import sys

# Helpers beside the tests (exact_model) import by plain name.
HERE = str(pathlib.Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
