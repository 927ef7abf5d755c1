"""Attention benchmark script: the same code and flags as `lowbit bench attention` (see lowbit/bench/README.md).

python benchmarks/attention.py --quick
python benchmarks/attention.py --batch 8 --context 4096 --kv-dtypes int8,int4 --prefill none --json out.json
"""

from __future__ import annotations

import argparse
import sys

from lowbit.bench.command import add_attention_arguments, attention_main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/attention.py", description=__doc__.splitlines()[0])
    add_attention_arguments(parser)
    sys.exit(attention_main(parser.parse_args()))
