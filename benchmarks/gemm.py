"""GEMM benchmark script: the same code and flags as `lowbit bench gemm` (see lowbit/bench/README.md).

python benchmarks/gemm.py --quick
python benchmarks/gemm.py --M 1,16 --layers 4096x4096 --dtypes int4,int3 --json out.json
"""

from __future__ import annotations

import argparse
import sys

from lowbit.bench.command import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/gemm.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
