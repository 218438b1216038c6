"""Explicit float32 vectors for kernels that keep a block of accumulators in registers.

LLVM's loop vectoriser only vectorises innermost loops. A matrix-product kernel wants the opposite: a block
of outputs (filters x pixels) held in registers while an inner loop runs over the input channels, each step
one vector load of pixels, a few broadcast weights and a multiply-add per accumulator. Written as scalar
loops, Numba either vectorises the channel loop (strided gathers) or keeps the accumulators in memory (a
load and a store per multiply-add; three times slower than BLAS). These intrinsics give a kernel a vector
type, `Lanes` (LANES float32 values: one vector register), that Numba keeps in SSA
values like any scalar, so the block stays in registers.

Loads and stores are unaligned and unchecked: the caller keeps `index + LANES <= arr.size`. They take 1-D
C-contiguous float32 arrays only. The arithmetic is IEEE float32, lane by lane: `fma` rounds once, as BLAS's
multiply-adds do; `leaky` is Darknet's `x > 0 ? x : .1 * x` (the product as in double: see TENTH_HIGH).

Numba's on-disk cache keys a kernel on its own source, not on these code generators: after editing this
module, delete the cached files of the kernels that use it (see kernels/__init__.py).
"""
from __future__ import annotations

import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from . import jit


def _host_lanes() -> int:
    try:
        wide = binding.get_host_cpu_features().get("avx512f", False)
    except RuntimeError:   # LLVM cannot read this CPU's features: assume the common AVX2
        wide = False
    return 16 if wide else 8


# One 512-bit register where the CPU has them, else one 256-bit register (LLVM splits wider vectors, and the
# kernels' 16 accumulators would no longer fit AVX2's 16 registers).
LANES = _host_lanes()
_FLOAT = ir.FloatType()
_VECTOR = ir.VectorType(_FLOAT, LANES)


class LanesType(types.Type):
    def __init__(self):
        super().__init__(name=f"float32x{LANES}")


Lanes = LanesType()


@register_model(LanesType)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _broadcast(builder, scalar, vector_type):
    """`scalar` in every lane of a vector_type value."""
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _is_flat_float32(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 and arr.layout == "C"


def _vector_pointer(context, builder, arr_type, arr, index, index_type):
    data = context.make_array(arr_type)(context, builder, arr).data
    offset = context.cast(builder, index, index_type, types.intp)
    return builder.bitcast(builder.gep(data, [offset]), _VECTOR.as_pointer())


@intrinsic
def load(typingctx, arr, index):
    """arr[index : index + LANES] as one vector."""
    if not (_is_flat_float32(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]),
                            align=4)
    return Lanes(arr, index), codegen


@intrinsic
def store(typingctx, arr, index, value):
    """arr[index : index + LANES] = value."""
    if not (_is_flat_float32(arr) and isinstance(index, types.Integer) and value == Lanes):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1]),
                      align=4)
        return context.get_dummy_value()
    return types.none(arr, index, Lanes), codegen


@intrinsic
def splat(typingctx, value):
    """A vector with `value` (converted to float32) in every lane."""
    if not isinstance(value, (types.Float, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return _broadcast(builder, context.cast(builder, args[0], sig.args[0], types.float32), _VECTOR)
    return Lanes(value), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c, rounded once."""
    if not (a == Lanes and b == Lanes and c == Lanes):
        return None

    def codegen(context, builder, sig, args):
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                                  f"llvm.fma.v{LANES}f32")
        return builder.call(function, list(args))
    return Lanes(Lanes, Lanes, Lanes), codegen


@intrinsic
def fma_float64(typingctx, a, b, c):
    """a * b + c for float64 scalars, rounded once (llvm.fma.f64: in a loop the vectoriser makes it one vector
    multiply-add, where Numba's a * b + c stays two operations)."""
    if not all(isinstance(t, types.Float) and t.bitwidth == 64 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        double = ir.DoubleType()
        function = cgutils.get_or_insert_function(builder.module, ir.FunctionType(double, [double] * 3),
                                                  "llvm.fma.f64")
        return builder.call(function, list(args))
    return types.float64(types.float64, types.float64, types.float64), codegen


@intrinsic
def add(typingctx, a, b):
    """a + b."""
    if not (a == Lanes and b == Lanes):
        return None

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])
    return Lanes(Lanes, Lanes), codegen


# Darknet's 0.1 * a (a double constant) rounded to float32, without leaving float32: 0.1 = TENTH_HIGH +
# TENTH_LOW to ~1e-17; a * TENTH_HIGH = h + e exactly (e from a fused multiply-add), so h + (e + a * TENTH_LOW)
# is the product rounded once. Checked against the double formula on every negative float32: identical except
# where the error term e is subnormal (|a| < 4.71e-37: results at most one unit in the last place apart, below
# 3e-45). Converting to double and back instead cost the 1x1 kernel 15-35% on leaky layers with few channels
# (8->48 at 160x160: 0.44-0.49 ms against 0.36-0.39 with 0.1f * a; this way 0.39-0.40).
TENTH_HIGH = float(np.float32(0.1))
TENTH_LOW = float(np.float32(0.1 - TENTH_HIGH))


@intrinsic
def leaky(typingctx, a):
    """Darknet's leaky ReLU, lane by lane: a where a > 0, else 0.1 * a as C forms it (the constant .1 is a
    double, so the product is the double one rounded to float32; 0.1f * a differs in the last bit for a
    fifth of the values): see TENTH_HIGH. inf, -inf and NaN as Darknet."""
    if a != Lanes:
        return None

    def codegen(context, builder, sig, args):
        value = args[0]
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 3),
                                             f"llvm.fma.v{LANES}f32")
        at_most = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VECTOR, [_VECTOR] * 2),
                                                 f"llvm.minnum.v{LANES}f32")
        high = ir.Constant(_VECTOR, [TENTH_HIGH] * LANES)
        h = builder.fmul(value, high)
        e = builder.call(fma, [value, high, builder.fneg(h)])
        t = builder.call(fma, [value, ir.Constant(_VECTOR, [TENTH_LOW] * LANES), e])
        # for a = -inf, t is NaN (-inf + inf): the clamp (minnum takes the number) keeps h + t = -inf
        scaled = builder.fadd(h, builder.call(at_most, [t, ir.Constant(_VECTOR, [3.0e38] * LANES)]))
        return builder.select(builder.fcmp_ordered(">", value, ir.Constant(_VECTOR, [0.0] * LANES)), value,
                              scaled)
    return Lanes(Lanes), codegen


@intrinsic
def keep_where(typingctx, mask, value):
    """value in the lanes where mask > 0, else 0 (a select: an inf or NaN in a dropped lane is gone)."""
    if not (mask == Lanes and value == Lanes):
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(_VECTOR, [0.0] * LANES)
        return builder.select(builder.fcmp_ordered(">", args[0], zero), args[1], zero)
    return Lanes(Lanes, Lanes), codegen


def _lane_mask(builder, count, count_type, context):
    """<LANES x i1>: lanes below `count` set."""
    count32 = builder.trunc(context.cast(builder, count, count_type, types.int64), ir.IntType(32))
    lanes = ir.Constant(ir.VectorType(ir.IntType(32), LANES), list(range(LANES)))
    return builder.icmp_signed("<", lanes, _broadcast(builder, count32, ir.VectorType(ir.IntType(32), LANES)))


@intrinsic
def load_first(typingctx, arr, index, count):
    """arr[index : index + count] in the first `count` lanes (0 <= count <= LANES), zeros after; nothing
    past them is read."""
    if not (_is_flat_float32(arr) and isinstance(index, types.Integer) and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VECTOR, [_VECTOR.as_pointer(), ir.IntType(32),
                                                      ir.VectorType(ir.IntType(1), LANES), _VECTOR]),
            f"llvm.masked.load.v{LANES}f32.p0")
        mask = _lane_mask(builder, args[2], sig.args[2], context)
        return builder.call(function, [pointer, ir.Constant(ir.IntType(32), 4), mask,
                                       ir.Constant(_VECTOR, [0.0] * LANES)])
    return Lanes(arr, index, count), codegen


@intrinsic
def store_first(typingctx, arr, index, value, count):
    """arr[index : index + count] = the first `count` lanes of value (0 <= count <= LANES); nothing past
    them is written."""
    if not (_is_flat_float32(arr) and isinstance(index, types.Integer) and value == Lanes
            and isinstance(count, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VECTOR, _VECTOR.as_pointer(), ir.IntType(32),
                                                            ir.VectorType(ir.IntType(1), LANES)]),
            f"llvm.masked.store.v{LANES}f32.p0")
        mask = _lane_mask(builder, args[3], sig.args[3], context)
        builder.call(function, [args[2], pointer, ir.Constant(ir.IntType(32), 4), mask])
        return context.get_dummy_value()
    return types.none(arr, index, Lanes, count), codegen


def _shuffle(indices):
    def typer(typingctx, a, b):
        if not (a == Lanes and b == Lanes):
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[1],
                                          ir.Constant(ir.VectorType(ir.IntType(32), LANES), indices))
        return Lanes(Lanes, Lanes), codegen
    return typer


# Lanes of the 2*LANES values a, b (a's first): the even ones, the odd ones; and `shifted_in(a, b)`, which is
# b moved up one lane with a's last lane in front (the values one position before b's, when a precedes b).
evens = intrinsic(_shuffle([2 * j for j in range(LANES)]))
odds = intrinsic(_shuffle([2 * j + 1 for j in range(LANES)]))
shifted_in = intrinsic(_shuffle([LANES - 1] + [LANES + j for j in range(LANES - 1)]))


@intrinsic
def store_stream(typingctx, arr, index, value):
    """arr[index : index + LANES] = value, bypassing the caches; the address must be 64-byte aligned."""
    if not (_is_flat_float32(arr) and isinstance(index, types.Integer) and value == Lanes):
        return None

    def codegen(context, builder, sig, args):
        pointer = _vector_pointer(context, builder, sig.args[0], args[0], args[1], sig.args[1])
        instruction = builder.store(args[2], pointer, align=LANES * 4)
        instruction.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.none(arr, index, Lanes), codegen


@intrinsic
def prefetch(typingctx, arr, index):
    """Ask the caches for the line holding arr.flat[index] (C-contiguous float32 of any rank): a hint that
    never faults, also past the array's end."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.layout == "C"
            and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        offset = context.cast(builder, args[1], sig.args[1], types.intp)
        # computed as an integer: an address past the array is no pointer LLVM may reason about
        i64 = ir.IntType(64)
        address = builder.add(builder.ptrtoint(data, i64), builder.mul(offset, ir.Constant(i64, 4)))
        pointer = builder.inttoptr(address, ir.IntType(8).as_pointer())
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), ir.IntType(32),
                                                            ir.IntType(32), ir.IntType(32)]), "llvm.prefetch.p0i8")
        i32 = ir.IntType(32)
        builder.call(function, [pointer, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()
    return types.none(arr, index), codegen


@jit(inline="always")
def store_outputs(arr, index, count, value, leaky_out):
    """arr[index : index + count] = value, Darknet's leaky of it where `leaky_out` (0 < count <= LANES; nothing
    past them is written)."""
    if leaky_out:
        value = leaky(value)
    if count == LANES:
        store(arr, index, value)
    else:
        store_first(arr, index, value, count)
