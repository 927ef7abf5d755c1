"""lowbit's tile IR: programs, statements, instructions, values and layouts (see README.md)."""

from lowbit.ir.instructions import IRTypeError
from lowbit.ir.program import Program
from lowbit.ir.types import TileType
from lowbit.ir.values import ScalarParam, TensorParam, Tile
from lowbit.ir.verifier import VerificationError, verify

__all__ = [
    "IRTypeError",
    "Program",
    "ScalarParam",
    "TensorParam",
    "Tile",
    "TileType",
    "VerificationError",
    "verify",
]
