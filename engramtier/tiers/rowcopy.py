"""Row copies for compiled loops: libc's memcpy, not a loop over a row's words.

Rows are read at random out of slabs far larger than any CPU cache, so each copy waits on memory. A
loop of word loads and stores (numba cannot prove source and destination apart, so it does not
vectorise it) keeps few of those loads in flight, where memcpy moves a row in wide loads: measured on
64k random 264-byte rows out of a 256 MiB slab, ~2x faster. They are LLVM's memcpy intrinsic, so they
compile and cache like any other numba code.

A step reads rows from several slabs at once, so its kernels take a row's *address* (a slab's
``ctypes.data`` plus its slot's offset, worked out once per row) rather than a tuple of arrays to
index: the caller keeps every array an address points into alive while the kernel runs.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def copy_elements(typingctx, dst, dst_start, src, src_start, count):
    """Copy ``count`` elements from ``src`` at flat element ``src_start`` to ``dst`` at ``dst_start``
    (C-contiguous arrays of one dtype; the ranges lie inside both and do not overlap)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.dtype == src.dtype
            and dst.layout == src.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        dst_view = context.make_array(signature.args[0])(context, builder, args[0])
        src_view = context.make_array(signature.args[2])(context, builder, args[2])
        itemsize = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        cgutils.raw_memcpy(builder, builder.gep(dst_view.data, [args[1]]), builder.gep(src_view.data, [args[3]]),
                           args[4], itemsize)
        return context.get_dummy_value()

    return types.void(dst, types.intp, src, types.intp, types.intp), codegen


@intrinsic
def copy_from_address(typingctx, dst, dst_start, address, nbytes):
    """Copy ``nbytes`` bytes from memory ``address`` into the uint8 array ``dst`` at ``dst_start``."""
    if not (isinstance(dst, types.Array) and dst.dtype == types.uint8 and dst.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        dst_view = context.make_array(signature.args[0])(context, builder, args[0])
        source = builder.inttoptr(args[2], ir.IntType(8).as_pointer())
        cgutils.raw_memcpy(builder, builder.gep(dst_view.data, [args[1]]), source, args[3], 1)
        return context.get_dummy_value()

    return types.void(dst, types.intp, types.intp, types.intp), codegen
