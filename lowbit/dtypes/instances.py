"""Every named lowbit data type as a module-level instance (re-exported from `lowbit`).

The list is written out so readers and type checkers see each name; `tests/dtypes` checks that it covers
every int/uint width and every float split eXmY with X >= 1, Y >= 0, 1 + X + Y <= 8.
"""

from __future__ import annotations

from lowbit.dtypes.datatype import DataType, bool_type, float_type, int_type, uint_type

# fmt: off
# --- integers ---------------------------------------------------------------------------------------
int1 = int_type(1)
int2 = int_type(2)
int3 = int_type(3)
int4 = int_type(4)
int5 = int_type(5)
int6 = int_type(6)
int7 = int_type(7)
int8 = int_type(8)
int16 = int_type(16)
int32 = int_type(32)
int64 = int_type(64)
uint1 = uint_type(1)
uint2 = uint_type(2)
uint3 = uint_type(3)
uint4 = uint_type(4)
uint5 = uint_type(5)
uint6 = uint_type(6)
uint7 = uint_type(7)
uint8 = uint_type(8)
uint16 = uint_type(16)
uint32 = uint_type(32)
boolean = bool_type()

# --- floats of at most 8 bits: fp{bits}_e{X}m{Y}; all "fn" (finite) except fp8_e5m2 (ieee) ---------
fp2_e1m0 = float_type(1, 0)
fp3_e1m1 = float_type(1, 1)
fp3_e2m0 = float_type(2, 0)
fp4_e1m2 = float_type(1, 2)
fp4_e2m1 = float_type(2, 1)
fp4_e3m0 = float_type(3, 0)
fp5_e1m3 = float_type(1, 3)
fp5_e2m2 = float_type(2, 2)
fp5_e3m1 = float_type(3, 1)
fp5_e4m0 = float_type(4, 0)
fp6_e1m4 = float_type(1, 4)
fp6_e2m3 = float_type(2, 3)
fp6_e3m2 = float_type(3, 2)
fp6_e4m1 = float_type(4, 1)
fp6_e5m0 = float_type(5, 0)
fp7_e1m5 = float_type(1, 5)
fp7_e2m4 = float_type(2, 4)
fp7_e3m3 = float_type(3, 3)
fp7_e4m2 = float_type(4, 2)
fp7_e5m1 = float_type(5, 1)
fp7_e6m0 = float_type(6, 0)
fp8_e1m6 = float_type(1, 6)
fp8_e2m5 = float_type(2, 5)
fp8_e3m4 = float_type(3, 4)
fp8_e4m3 = float_type(4, 3)
fp8_e5m2 = float_type(5, 2)
fp8_e6m1 = float_type(6, 1)
fp8_e7m0 = float_type(7, 0)

# --- IEEE floats ------------------------------------------------------------------------------------
float16 = float_type(5, 10)
bfloat16 = float_type(8, 7)
float32 = float_type(8, 23)

INTEGER_TYPES: tuple[DataType, ...] = (
    int1, int2, int3, int4, int5, int6, int7, int8, int16, int32, int64, uint1, uint2, uint3, uint4,
    uint5, uint6, uint7, uint8, uint16, uint32,
)
SMALL_FLOAT_TYPES: tuple[DataType, ...] = (
    fp2_e1m0, fp3_e1m1, fp3_e2m0, fp4_e1m2, fp4_e2m1, fp4_e3m0, fp5_e1m3, fp5_e2m2, fp5_e3m1, fp5_e4m0,
    fp6_e1m4, fp6_e2m3, fp6_e3m2, fp6_e4m1, fp6_e5m0, fp7_e1m5, fp7_e2m4, fp7_e3m3, fp7_e4m2, fp7_e5m1,
    fp7_e6m0, fp8_e1m6, fp8_e2m5, fp8_e3m4, fp8_e4m3, fp8_e5m2, fp8_e6m1, fp8_e7m0,
)
IEEE_FLOAT_TYPES: tuple[DataType, ...] = (float16, bfloat16, float32)
ALL_TYPES: tuple[DataType, ...] = (*INTEGER_TYPES, boolean, *SMALL_FLOAT_TYPES, *IEEE_FLOAT_TYPES)
# fmt: on

INSTANCE_NAMES: tuple[str, ...] = tuple(t.name for t in ALL_TYPES)
