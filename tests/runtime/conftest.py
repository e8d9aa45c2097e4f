"""Make the shared helpers of the Ray-runtime tests (raytest.py) importable under --import-mode=importlib."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
