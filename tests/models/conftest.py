"""Model tests share `hf_oracle.py` (tiny random HF transformers models, the oracle)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
