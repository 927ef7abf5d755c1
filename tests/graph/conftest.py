"""Graph tests share `graph_cases.py` (random small architectures and recipes)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
