"""Backend tests share `backend_harness.py` (this folder), importable from the backend subfolders too."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
