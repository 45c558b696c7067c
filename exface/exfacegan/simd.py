"""16-lane vector kernels for the numba code of :mod:`exface.exfacegan.rank_select`.

numba's loop vectorizer leaves two things out that the labelling pass needs per entry:
stream compaction (appending the entries that pass a test to a buffer) and a store that
bypasses the cache. These ``@intrinsic`` functions write them in LLVM IR over 16-lane
vectors (with the bit cast that lets min/max run over integer keys, which do vectorize): ``llvm.experimental.vector.compress`` is one ``vcompressps`` /
``vpcompressd`` on AVX-512 and a generic expansion elsewhere (so the code is correct on any
CPU LLVM targets, and fast with AVX-512); ``numba>=0.68`` brings an LLVM that has it.

Each kernel takes arrays with an index and works on 16 consecutive entries from there: the
caller guarantees that those entries exist and that the rows have unit stride.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import config
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["HAS_AVX512", "f32_from_bits", "gather16", "scan16", "scan16_nt", "store_fence"]


def _target_has_avx512() -> bool:
    """Whether numba compiles for AVX-512 here: its ``NUMBA_CPU_FEATURES`` when set, else the host's."""
    features = config.CPU_FEATURES or llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


HAS_AVX512: bool = _target_has_avx512()
"""The compress kernels are one instruction per 16 lanes only with AVX-512 (vcompressps);
elsewhere LLVM expands them lane by lane, and callers choose another kernel."""

_F32, _I32, _I16, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(16), ir.IntType(64)
_V16F, _V16I = ir.VectorType(_F32, 16), ir.VectorType(_I32, 16)
_V16M, _V16B = ir.VectorType(ir.IntType(1), 16), ir.VectorType(ir.IntType(8), 16)


def _at(context, builder, arrty, arr, idx, vec):
    """A pointer to ``vec``-typed lanes at ``arr[idx]``."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), vec.as_pointer())


def _splat(context, builder, val, valty, nbty, vec):
    """``val`` (numba type ``valty``, cast to ``nbty``) in all 16 lanes of ``vec``."""
    s = context.cast(builder, val, valty, nbty)
    v = builder.insert_element(ir.Constant(vec, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vec, ir.Undefined), ir.Constant(_V16I, [0] * 16))


def _compress(builder, values, mask):
    """The lanes of ``values`` where ``mask`` is set, moved to the front (the rest undefined)."""
    vec = values.type
    name = "llvm.experimental.vector.compress.v16" + ("f32" if vec == _V16F else "i32")
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, _V16M, vec]), name)
    return builder.call(fn, [values, mask, ir.Constant(vec, ir.Undefined)])


def _popcount(builder, mask):
    """The number of set lanes of a 16-lane mask, as int64."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I16, [_I16]), "llvm.ctpop.i16")
    return builder.zext(builder.call(fn, [builder.bitcast(mask, _I16)]), _I64)


def _make_scan16(nontemporal: bool):
    """The scan kernel; ``nontemporal``: its label stores bypass the cache (16-byte aligned
    destinations only). The labels are not read again soon, and a plain store first reads
    each line of the label matrix (400 MB at R = N = 20k) from memory."""

    def scan(typingctx, t, j, lo, hi, o, oj, bv, bi, nb, col):
        """The scan of 16 entries ``t[j : j + 16]`` (float32) in registers.

        Writes the labels ``t > lo`` (int8) to ``o[oj : oj + 16]``, compresses the band
        entries (``lo < t <= hi``) and their columns ``col + 0..15`` to the front of one
        vector each and stores all 16 lanes at ``bv[nb:]`` / ``bi[nb:]`` (the caller
        guarantees room for 16 and keeps only the first ``n_band``). Returns
        ``n_band << 32 | n_le`` (``n_le``: entries ``<= lo``). NaN compares false: labelled
        0, neither counted nor stored.
        """
        if not (t.dtype == types.float32 and bv.dtype == types.float32 and bi.dtype == types.int32
                and o.dtype in (types.int8, types.uint8)):
            return None
        sig = types.int64(t, j, lo, hi, o, oj, bv, bi, nb, col)

        def codegen(context, builder, signature, args):
            ta, j, lo, hi, oa, oj, bva, bia, nb, col = args
            ty = signature.args
            x = builder.load(_at(context, builder, ty[0], ta, j, _V16F), align=4)
            lo_v = _splat(context, builder, lo, ty[2], types.float32, _V16F)
            gt = builder.fcmp_ordered(">", x, lo_v)
            le = builder.fcmp_ordered("<=", x, lo_v)
            in_hi = builder.fcmp_ordered("<=", x, _splat(context, builder, hi, ty[3], types.float32, _V16F))
            band = builder.and_(gt, in_hi)
            labels = builder.zext(gt, _V16B)
            dest = _at(context, builder, ty[4], oa, oj, _V16B)
            if nontemporal:
                st = builder.store(labels, dest, align=16)
                st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(_I32, 1)]))
            else:
                builder.store(labels, dest, align=1)
            cols = builder.add(_splat(context, builder, col, ty[9], types.int32, _V16I),
                               ir.Constant(_V16I, list(range(16))))
            builder.store(_compress(builder, x, band), _at(context, builder, ty[6], bva, nb, _V16F), align=4)
            builder.store(_compress(builder, cols, band), _at(context, builder, ty[7], bia, nb, _V16I), align=4)
            return builder.or_(builder.shl(_popcount(builder, band), ir.Constant(_I64, 32)), _popcount(builder, le))

        return sig, codegen

    return intrinsic(scan)


scan16 = _make_scan16(False)
scan16_nt = _make_scan16(True)


@intrinsic
def gather16(typingctx, v, bin_of, t, bin_a, bin_b, small, m):
    """Entries ``v[t : t + 16]`` (float32) whose ``bin_of`` (int32) lies in ``bin_a..bin_b``,
    compressed into ``small[m:]`` (all 16 lanes stored); returns their count."""
    if not (v.dtype == types.float32 and small.dtype == types.float32 and bin_of.dtype == types.int32):
        return None
    sig = types.int64(v, bin_of, t, bin_a, bin_b, small, m)

    def codegen(context, builder, signature, args):
        va, ka, t, a, b, sa, m = args
        ty = signature.args
        x = builder.load(_at(context, builder, ty[0], va, t, _V16F), align=4)
        k = builder.load(_at(context, builder, ty[1], ka, t, _V16I), align=4)
        keep = builder.and_(
            builder.icmp_signed(">=", k, _splat(context, builder, a, ty[3], types.int32, _V16I)),
            builder.icmp_signed("<=", k, _splat(context, builder, b, ty[4], types.int32, _V16I)))
        builder.store(_compress(builder, x, keep), _at(context, builder, ty[5], sa, m, _V16F), align=4)
        return _popcount(builder, keep)

    return sig, codegen


@intrinsic
def f32_from_bits(typingctx, bits):
    """The float32 whose bit pattern is the low 32 bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], _I32) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, _F32)

    return types.float32(bits), codegen


@intrinsic
def store_fence(typingctx):
    """A full fence: orders the weakly ordered non-temporal stores before what follows."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen
