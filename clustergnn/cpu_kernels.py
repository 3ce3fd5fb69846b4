"""Fused CPU kernels (numba): the shared machinery and the generic kernels of the engine's hot path.

On a CPU, a batch of a few hundred edges is bound by memory traffic and latency, not flops: torch
expresses a sum delta as "gather one row per contribution, then scatter-add", which materialises an
``(E, D)`` float64 temporary and walks the aggregate table twice, and finish, store and change
detection are more passes over the affected rows.  The fused kernels do the same work in one pass
each (see ``docs/engine.md``).  The kernels of one aggregation family live with its rule:
``clustergnn/aggregate/sum.py`` (``sum_rows``, ``gather_mean_self``, ``gather_f32``) and
``clustergnn/aggregate/attention.py`` (``gat_aggregate``).  This module holds what they share and the
kernels that are not one family's:

* ``jit`` / ``pjit`` (numba's ``njit``, cached on disk, serial / parallel), ``prefetch_row`` /
  ``prefetch_span`` / ``prefetch_ahead`` (LLVM prefetch intrinsics: the row loops touch rows scattered
  over tables far larger than the caches) and ``PREFETCH_AHEAD``;
* ``store_changed``: the store of a finished layer, with the stop condition of propagation;
* graph edits: ``unique_live`` (bitmap dedupe), ``lookup_direct`` (ids to slots), ``append_need`` /
  ``block_append_pair`` (adjacency appends, both directions at once), ``remove_pairs`` (removals by
  one scan of each touched block), ``gather_blocks`` (CSR of a set of blocks).

Parallel kernels use at most torch's thread count (:func:`use_threads`).  ``CLUSTERGNN_KERNELS=torch``
(or :func:`disabled`) selects the plain numpy/torch path, which is also the CUDA path; the tests hold
both to DGL, and ``tests/core/test_fused_bit_identity.py`` holds them to each other: bit-identical
wherever both apply the same arithmetic, which ``clustergnn/aggregate/sum.py`` and
``clustergnn/aggregate/attention.py`` state precisely.  Without numba installed, the plain path is used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import numpy as np

# Compiled kernels are cached next to their modules (this package and clustergnn/aggregate/); where
# that is read-only (an installed package in a locked-down image) and no cache directory is configured,
# use a temporary one instead.  Every kernel module imports this one first, so this runs before numba
# reads its configuration.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
if "NUMBA_CACHE_DIR" not in os.environ and not (
    os.access(_PACKAGE_DIR, os.W_OK) and os.access(os.path.join(_PACKAGE_DIR, "aggregate"), os.W_OK)
):
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), "clustergnn-numba-cache")

try:  # pragma: no cover - exercised by whichever environment runs the tests
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover
    numba = None
    AVAILABLE = False


_ENABLED = AVAILABLE and os.environ.get("CLUSTERGNN_KERNELS", "").lower() != "torch"


def enabled() -> bool:
    """Whether CPU engines use these kernels: numba is installed and ``CLUSTERGNN_KERNELS=torch`` was not
    set when clustergnn was imported (and no :func:`disabled` block is active)."""
    return _ENABLED


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, engines built and graphs edited take the plain numpy/torch path (for tests that
    hold the two paths to the same results)."""
    global _ENABLED
    saved, _ENABLED = _ENABLED, False
    try:
        yield
    finally:
        _ENABLED = saved


_NEIGHBOURS_PARALLEL = 1 << 16  # neighbours from which unique_live_neighbours marks them in parallel,
_NEIGHBOUR_CHUNKS = 4  # in this many runs (a bitmap each)
PREFETCH_AHEAD = 6  # rows ahead whose cache lines a row loop requests while it works on the current one

if AVAILABLE:
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic

    def _emit_prefetch(context, builder, ptr, nbytes):  # pragma: no cover - compile time
        """LLVM ``prefetch`` (read, keep in all cache levels, data) of each 64-byte line of ``nbytes``
        bytes from ``ptr``, at most 16 lines (1 KiB).  A prefetch never faults."""
        i8p = _ir.IntType(8).as_pointer()
        i32 = _ir.IntType(32)
        base = builder.bitcast(ptr, i8p)
        fn = _cgutils.get_or_insert_function(
            builder.module, _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
        )
        for line in range(16):
            off = context.get_constant(_types.intp, line * 64)
            with builder.if_then(builder.icmp_signed("<", off, nbytes)):
                builder.call(
                    fn, [builder.gep(base, [off]), _ir.Constant(i32, 0), _ir.Constant(i32, 3), _ir.Constant(i32, 1)]
                )

    def _item_bytes(context, aryty, count):  # pragma: no cover - compile time
        itemsize = context.get_abi_sizeof(context.get_data_type(aryty.dtype))
        return count, context.get_constant(_types.intp, itemsize)

    @_intrinsic
    def prefetch_row(typingctx, arr, row):  # pragma: no cover - compiled
        """Ask the CPU to start loading every cache line of ``arr[row, :]`` (2-D, up to 1 KiB) now: the
        row loops below touch rows scattered over tables far larger than the caches, and without this
        each row's loads wait on memory one row after another."""
        sig = _types.void(arr, row)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            zero = context.get_constant(_types.intp, 0)
            ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], zero], wraparound=False)
            width = _cgutils.unpack_tuple(builder, ary.shape, 2)[1]
            _emit_prefetch(context, builder, ptr, builder.mul(*_item_bytes(context, aryty, width)))
            return context.get_dummy_value()

        return sig, codegen

    @_intrinsic
    def prefetch_span(typingctx, arr, i, n):  # pragma: no cover - compiled
        """Ask the CPU to start loading the cache lines of ``arr[i:i+n]`` (1-D, up to 1 KiB)."""
        sig = _types.void(arr, i, n)

        def codegen(context, builder, signature, args):
            aryty = signature.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = _cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
            _emit_prefetch(context, builder, ptr, builder.mul(*_item_bytes(context, aryty, args[2])))
            return context.get_dummy_value()

        return sig, codegen

    @_intrinsic
    def popcount(typingctx, x):  # pragma: no cover - compiled
        """The number of set bits of the ``uint64`` ``x`` (LLVM ``ctpop``: one instruction where the CPU has it)."""
        sig = _types.uint64(_types.uint64)

        def codegen(context, builder, signature, args):
            i64 = _ir.IntType(64)
            fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
            return builder.call(fn, [args[0]])

        return sig, codegen

    @_intrinsic
    def f32_bits(typingctx, x):  # pragma: no cover - compiled
        """The bits of the ``float32`` ``x`` as a ``uint32`` (a bit cast: no conversion)."""
        sig = _types.uint32(_types.float32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(32))

        return sig, codegen

    @_intrinsic
    def bits_f32(typingctx, u):  # pragma: no cover - compiled
        """The ``float32`` whose bits are the ``uint32`` ``u`` (``f32_bits``' inverse)."""
        sig = _types.float32(_types.uint32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.FloatType())

        return sig, codegen

    jit = numba.njit(cache=True, nogil=True, boundscheck=False)

    @jit
    def abs_max_row(a, r):  # pragma: no cover - jitted
        """``max_k |a[r, k]|`` of a ``float32`` table, NaNs skipped (as ``if |x| > big: big = |x|`` from 0
        does), in one vectorised pass: for non-NaN floats the order of ``|x|`` is the order of their
        bits with the sign cleared, so the max is an unsigned integer max, which the compiler vectorises
        (a float max with a branch it does not: it was a third of a wide layer's delta).  A NaN's bits
        are above infinity's: only then is the row scanned again the slow way."""
        m = np.uint32(0)
        for k in range(a.shape[1]):
            b = f32_bits(a[r, k]) & np.uint32(0x7FFFFFFF)
            if b > m:
                m = b
        if m <= np.uint32(0x7F800000):
            return bits_f32(m)
        big = np.float32(0.0)
        for k in range(a.shape[1]):
            x = abs(a[r, k])
            if x > big:
                big = x
        return big

    pjit = numba.njit(cache=True, nogil=True, boundscheck=False, parallel=True)

    @jit
    def balanced_bounds(work, nch):  # pragma: no cover - jitted
        """``nch + 1`` bounds splitting ``range(len(work))`` into ``nch`` runs of about equal total ``work``
        (a run may be empty).  A parallel loop over the runs: numba's splits its range evenly between
        the threads, which on a skewed graph (R-MAT's hubs are low slots) leaves one thread the hubs."""
        n = work.shape[0]
        total = 0
        for i in range(n):
            total += work[i]
        bounds = np.empty(nch + 1, dtype=np.int64)
        bounds[0] = 0
        c, run = 1, 0
        for i in range(n):
            run += work[i]
            while c < nch and run * nch >= c * total:
                bounds[c] = i + 1
                c += 1
        while c <= nch:
            bounds[c] = n
            c += 1
        return bounds

    @jit
    def prefetch_ahead(table, rows, i):  # pragma: no cover - jitted
        """Prefetch the row of ``table`` that a row loop at ``i`` reaches ``PREFETCH_AHEAD`` steps later."""
        if i + PREFETCH_AHEAD < rows.shape[0]:
            prefetch_row(table, rows[i + PREFETCH_AHEAD])

    @jit
    def store_changed(h, rows, out, relu, changed):  # pragma: no cover - jitted
        """``h[rows] = relu(out) if relu else out``, flagging the rows that changed bit-for-bit."""
        d = h.shape[1]
        n = rows.shape[0]
        for i in range(n):
            prefetch_ahead(h, rows, i)
            r = rows[i]
            diff = False
            for k in range(d):
                x = out[i, k]
                if relu and x < 0:
                    x = np.float32(0.0)
                if h[r, k] != x:
                    diff = True
                h[r, k] = x
            changed[i] = diff

    _DEBRUIJN = np.array(
        [
            0,
            1,
            48,
            2,
            57,
            49,
            28,
            3,
            61,
            58,
            50,
            42,
            38,
            29,
            17,
            4,
            62,
            55,
            59,
            36,
            53,
            51,
            43,
            22,
            45,
            39,
            33,
            30,
            24,
            18,
            12,
            5,
            63,
            47,
            56,
            27,
            60,
            41,
            37,
            16,
            54,
            35,
            52,
            21,
            44,
            32,
            23,
            11,
            46,
            26,
            40,
            15,
            34,
            20,
            31,
            10,
            25,
            14,
            19,
            9,
            13,
            8,
            7,
            6,
        ],
        dtype=np.int64,
    )

    @jit
    def _drain_bits(bits, lo, hi, live, out):  # pragma: no cover - jitted
        """Write the set bits of ``bits[lo:hi]`` whose vertex is ``live`` to ``out`` in order (de Bruijn
        bit scan), clearing the words; returns how many were written."""
        n = 0
        for w in range(lo, hi):
            word = bits[w]
            if word == 0:
                continue
            bits[w] = 0
            while word != 0:
                low = word & (~word + np.uint64(1))
                b = _DEBRUIJN[np.int64((low * np.uint64(0x03F79D71B4CB0A89)) >> np.uint64(58))]
                v = (w << 6) + b
                if live[v]:
                    out[n] = v
                    n += 1
                word ^= low
        return n

    @jit
    def _set_bits(values, bits, lo, hi):  # pragma: no cover - jitted
        """Set the bit of every value in the bitmap ``bits``; returns the touched word range ``(lo, hi)``
        widened from the one given (``unique_live``'s first pass, shared by both kernels)."""
        for i in range(values.shape[0]):
            v = values[i]
            w = v >> 6
            bits[w] |= np.uint64(1) << np.uint64(v & 63)
            lo = min(lo, w)
            hi = max(hi, w + 1)
        return lo, hi

    @jit
    def unique_live(values, live, bits):  # pragma: no cover - jitted
        """Sorted distinct ``values`` with ``live[v]``, through a bitmap: set a bit per value, then read
        the set bits back word by word (de Bruijn bit scan), clearing them.  ``bits`` is an all-zero
        ``uint64`` scratch of ``ceil(len(live) / 64)`` words (left all-zero).  O(len(values) + words):
        several times faster than a sort-based unique, and the rows come out sorted for free."""
        lo, hi = _set_bits(values, bits, bits.shape[0], 0)
        out = np.empty(values.shape[0], dtype=np.int64)
        return out[: _drain_bits(bits, lo, hi, live, out)]

    @pjit
    def unique_live_neighbours(values, start, length, pool, owners, live, bits):  # pragma: no cover - jitted
        """``unique_live`` of ``values`` together with every neighbour of ``owners`` in a block adjacency
        (``pool[start[u]:start[u] + length[u]]``), read straight from the blocks: the neighbours are not
        gathered into a temporary first (``BlockAdjacency.gather_csr``).  From ``_NEIGHBOURS_PARALLEL``
        neighbours, the owners are split into ``_NEIGHBOUR_CHUNKS`` runs of about equal block length, run
        in parallel, each marking a bitmap of its own, OR-ed into ``bits`` afterwards (the same set)."""
        lo, hi = _set_bits(values, bits, bits.shape[0], 0)
        total = values.shape[0]
        no = owners.shape[0]
        work = np.empty(no, dtype=np.int64)
        for j in range(no):
            work[j] = length[owners[j]] + 4
            total += length[owners[j]]
        if total - values.shape[0] < _NEIGHBOURS_PARALLEL:
            for j in range(no):
                u = owners[j]
                s = start[u]
                for e in range(s, s + length[u]):
                    v = np.int64(pool[e])
                    w = v >> 6
                    bits[w] |= np.uint64(1) << np.uint64(v & 63)
                    lo = min(lo, w)
                    hi = max(hi, w + 1)
        else:
            nw = bits.shape[0]
            nch = _NEIGHBOUR_CHUNKS
            bounds = balanced_bounds(work, nch)
            own = np.zeros((nch, nw), dtype=np.uint64)
            for c in numba.prange(nch):
                for j in range(bounds[c], bounds[c + 1]):
                    u = owners[j]
                    s = start[u]
                    for e in range(s, s + length[u]):
                        v = np.uint64(pool[e])
                        own[c, np.int64(v >> np.uint64(6))] |= np.uint64(1) << (v & np.uint64(63))
            for w in range(nw):
                word = bits[w]
                for c in range(nch):
                    word |= own[c, w]
                if word != 0:
                    bits[w] = word
                    lo = min(lo, w)
                    hi = max(hi, w + 1)
        out = np.empty(min(total, live.shape[0]), dtype=np.int64)
        return out[: _drain_bits(bits, lo, hi, live, out)]

    @jit
    def lookup_direct(table, ids, out):  # pragma: no cover - jitted
        """``out[i] = table[ids[i]]`` for ids inside the table, -1 elsewhere; returns how many ids were
        outside it (the caller resolves those that may be in its dict)."""
        outside = 0
        for i in range(ids.shape[0]):
            v = ids[i]
            if 0 <= v < table.shape[0]:
                out[i] = table[v]
            else:
                out[i] = -1
                outside += 1
        return outside

    @jit
    def _count_owners(owners, count):  # pragma: no cover - jitted
        for i in range(owners.shape[0]):
            count[owners[i]] += 1

    @jit
    def _grown_cap(length, cap, o, c, min_block):  # pragma: no cover - jitted
        """The capacity block ``o`` moves to when ``c`` entries are appended (0: it has room)."""
        return max(length[o] + c, 2 * cap[o], min_block) if length[o] + c > cap[o] else 0

    @jit
    def append_need(length, cap, owners, count, min_block):  # pragma: no cover - jitted
        """Pool entries ``block_append`` will take for ``owners`` (``count``: all-zero scratch, left so)."""
        _count_owners(owners, count)
        need = 0
        for i in range(owners.shape[0]):
            o = owners[i]
            if count[o] > 0:
                need += _grown_cap(length, cap, o, count[o], min_block)
                count[o] = 0
        return need

    @jit
    def block_append(start, length, cap, pool, used, owners, nbrs, count, min_block):  # pragma: no cover
        """``BlockAdjacency.append`` in one pass: grow the blocks that overflow (moved to the pool's tail),
        then append each ``nbrs[i]`` to ``owners[i]``'s block in input order.  ``count`` is an all-zero
        scratch array (left all-zero).  Returns ``(used, garbage)`` after the append, or ``(-need, 0)``
        without changing anything when the pool needs ``need`` more entries first."""
        need = append_need(length, cap, owners, count, min_block)
        if used + need > pool.shape[0]:
            return -need, 0
        _count_owners(owners, count)
        garbage = 0
        for i in range(owners.shape[0]):
            o = owners[i]
            if count[o] > 0:
                new_cap = _grown_cap(length, cap, o, count[o], min_block)
                if new_cap:
                    s = start[o]
                    for k in range(length[o]):
                        pool[used + k] = pool[s + k]
                    garbage += cap[o]
                    start[o] = used
                    cap[o] = new_cap
                    used += new_cap
                count[o] = 0
        m = owners.shape[0]
        for i in range(m):
            if i + PREFETCH_AHEAD < m:  # the slot a few entries ahead will write: likely a cache miss
                o2 = owners[i + PREFETCH_AHEAD]
                prefetch_span(pool, start[o2] + length[o2], 1)
            o = owners[i]
            pool[start[o] + length[o]] = nbrs[i]
            length[o] += 1
        return used, garbage

    def _block_append_pair(
        in_start,
        in_length,
        in_cap,
        in_pool,
        in_used,
        in_count,
        out_start,
        out_length,
        out_cap,
        out_pool,
        out_used,
        out_count,
        src,
        dst,
        min_block,
        result,
    ):  # pragma: no cover - jitted
        """Edges ``src -> dst`` appended to the in-blocks (owner ``dst``) and the out-blocks (owner ``src``)
        at once, one adjacency per core (they share nothing).  ``result`` gets ``block_append``'s
        ``(used, garbage)`` for the in-side, then the out-side."""
        for side in numba.prange(2):
            if side == 0:
                u, g = block_append(in_start, in_length, in_cap, in_pool, in_used, dst, src, in_count, min_block)
            else:
                u, g = block_append(out_start, out_length, out_cap, out_pool, out_used, src, dst, out_count, min_block)
            result[2 * side] = u
            result[2 * side + 1] = g

    block_append_pair = pjit(_block_append_pair)
    # a few edges (a small batch's): both sides on this core, no parallel region to wake (~15 µs of a B = 1 batch)
    block_append_pair_serial = jit(_block_append_pair)
    APPEND_PAIR_PARALLEL = 64  # edges from which the two sides go to two cores

    def _gather_blocks(start, length, pool, owners, indptr, out):  # pragma: no cover - jitted
        """CSR of ``owners``' blocks: ``out[indptr[i]:indptr[i+1]] = block(owners[i])`` (int64)."""
        m = owners.shape[0]
        for i in numba.prange(m):
            if i + PREFETCH_AHEAD < m:
                o2 = owners[i + PREFETCH_AHEAD]
                prefetch_span(pool, start[o2], length[o2])
            s = start[owners[i]]
            o = indptr[i]
            for k in range(indptr[i + 1] - o):
                out[o + k] = pool[s + k]

    gather_blocks = pjit(_gather_blocks)  # a whole graph's in-edges (full recompute)
    gather_blocks_serial = jit(_gather_blocks)  # a batch's few blocks: not worth waking the workers


_warm: set[str] = set()  # what warm_up compiled: "common" (every other kernel) and each sum dtype's name


def use_threads(n: int) -> None:
    """Run the parallel kernels on ``n`` threads at most (an engine passes torch's thread count, so a
    process that shares the machine with others, like a partition owner with ``torch.set_num_threads(1)``,
    does not run two busy-waiting thread pools per process on the same cores)."""
    if AVAILABLE:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def warm_up(sum_dtypes: tuple[type, ...] = (np.float32,)) -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the argument types the engine
    passes, once per process, so that an engine's first batch does not pay seconds of compilation.
    ``sum_dtypes``: the dtypes of the engine's sum aggregates (``clustergnn.caches``: float32 for a
    narrow sum, float64 with ``rules.NARROW_SUMS = False``); the sum kernels are compiled for each (a
    cold compile of ``sum_rows`` takes 7-16 s on one core: left to the first batch, it once held a
    partition owner's first write past the gateway's verdict window, docs/engine.md)."""
    if not _ENABLED:
        return
    # the family kernels' modules import this one: imported here, when the engine asks, not at import
    from clustergnn.aggregate import attention
    from clustergnn.aggregate import sum as sum_family

    for dtype in (np.dtype(d) for d in sum_dtypes):
        if dtype.name not in _warm:
            sum_family.warm_up_sum_kernels(dtype)
            _warm.add(dtype.name)
    if "common" in _warm:
        return
    i64 = np.int64
    one = np.zeros(1, dtype=i64)
    changed = np.zeros(1, dtype=np.bool_)
    store_changed(np.zeros((2, 2), np.float32), one, np.zeros((1, 2), np.float32), True, changed)
    unique_live(one, np.ones(2, dtype=np.bool_), np.zeros(1, dtype=np.uint64))
    unique_live_neighbours(
        one, one, one, np.zeros(2, np.int32), one, np.ones(2, dtype=np.bool_), np.zeros(1, dtype=np.uint64)
    )
    for ix in (i64, np.int32):  # ids and endpoint slots: int64, or int32 for an initial graph (the build)
        idx = np.zeros(1, dtype=ix)
        lookup_direct(np.zeros(2, dtype=np.int32), one, np.zeros(1, dtype=ix))
        count = np.zeros(2, dtype=i64)
        append_need(np.zeros(2, i64), np.zeros(2, i64), idx, count, 4)
        res = np.zeros(4, dtype=i64)
        for kernel in (block_append_pair, block_append_pair_serial):
            kernel(
                np.zeros(2, i64),
                np.zeros(2, i64),
                np.zeros(2, i64),
                np.zeros(16, np.int32),
                0,
                count,
                np.zeros(2, i64),
                np.zeros(2, i64),
                np.zeros(2, i64),
                np.zeros(16, np.int32),
                0,
                count.copy(),
                idx,
                idx,
                4,
                res,
            )
        for kernel in (gather_blocks, gather_blocks_serial):  # Adjacency.gather_csr: int64 or int32 rows
            kernel(np.zeros(2, i64), np.zeros(2, i64), np.zeros(4, np.int32), one, np.zeros(2, ix), np.zeros(0, ix))
    for apply in (False, True):
        remove_pairs(
            np.zeros(2, i64),
            np.zeros(2, i64),
            np.zeros(4, np.int32),
            np.zeros(1, i64),
            one,
            np.array([0, 1], i64),
            np.zeros(1, i64),
            apply,
        )
    sum_family.warm_up_kernels()
    attention.warm_up_kernels()
    _warm.add("common")


if AVAILABLE:

    @pjit
    def remove_pairs(start, length, pool, keys, want, gptr, avail, apply):  # pragma: no cover - jitted
        """Count, and (``apply``) remove, entries of the blocks named by ``keys``.

        ``keys`` are the distinct requested ``owner << 32 | neighbour`` pairs, sorted; ``want[k]`` copies
        of pair ``k`` are to go; ``keys[gptr[g]:gptr[g+1]]`` share one owner.  Every owner's block is
        scanned once (the neighbour looked up among that owner's requested pairs by binary search), so a
        batch's removals cost O(sum of the touched blocks), with no gather or sort of them.  Counting
        fills ``avail``; removing drops, for each pair, its first ``want[k]`` copies in block order (as
        ``BlockAdjacency.find`` does) and closes the gaps (no store before a block's first removal, so
        the untouched head of a hub's block is only read).  A bitmap of every requested neighbour (a bit
        per vertex up to the largest: small enough to stay in cache) lets the entries whose neighbour no
        pair names skip the search: a hub's block is mostly such entries."""
        nmax = 0
        for k in range(keys.shape[0]):
            nmax = max(nmax, keys[k] & 0xFFFFFFFF)
        nw = (nmax >> 6) + 1
        named = np.zeros(nw, dtype=np.uint64)
        for k in range(keys.shape[0]):
            v = keys[k] & 0xFFFFFFFF
            named[v >> 6] |= np.uint64(1) << np.uint64(v & 63)
        ng = gptr.shape[0] - 1
        work = np.empty(ng, dtype=np.int64)  # a block's scan, plus an owner's own work
        for g in range(ng):
            work[g] = length[keys[gptr[g]] >> 32] + 16
        bounds = balanced_bounds(work, min(ng, 64))  # (the hubs' blocks would otherwise load one thread)
        for ch in numba.prange(bounds.shape[0] - 1):
            for g in range(bounds[ch], bounds[ch + 1]):
                k0, k1 = gptr[g], gptr[g + 1]
                o = keys[k0] >> 32
                s, n = start[o], length[o]
                taken = np.zeros(k1 - k0, dtype=np.int64)
                w = 0
                for i in range(n):
                    v = np.int64(pool[s + i])
                    vw = v >> 6
                    if vw >= nw or not (named[vw] >> np.uint64(v & 63)) & np.uint64(1):  # no pair names v
                        if apply:
                            if w != i:  # (up to the first removal the block stays as it is: no store)
                                pool[s + w] = pool[s + i]
                            w += 1
                        continue
                    lo, hi = k0, k1  # binary search of (o, v) among this owner's requested pairs
                    target = (o << 32) | v
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if keys[mid] < target:
                            lo = mid + 1
                        else:
                            hi = mid
                    hit = lo < k1 and keys[lo] == target
                    if not apply:
                        if hit:
                            avail[lo] += 1
                        continue
                    if hit and taken[lo - k0] < want[lo]:
                        taken[lo - k0] += 1
                    else:
                        if w != i:
                            pool[s + w] = pool[s + i]
                        w += 1
                if apply:
                    length[o] = w
