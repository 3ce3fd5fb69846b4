"""Fused CPU kernels for the engine's hot path (numba), used when the caches live on the CPU.

On a CPU, a batch of a few hundred edges is bound by memory traffic and latency, not flops: torch
expresses a sum delta as "gather one row per contribution, then scatter-add", which materialises an
``(E, D)`` float64 temporary and walks the aggregate table twice, and finish, store and change
detection are more passes over the affected rows.  These kernels do the same arithmetic, operation for
operation, in one pass each (see ``docs/engine.md``):

* ``sum_rows``: a sum layer, ``a'_v = a_v + sum_{E+} m_u - sum_{E-} m_u + sum_{(u,v), u in S} (m'_u - m_u)``
  with every term widened to float64 (``m'_u - m_u`` of two float32 values is exact in float64),
  bucketed by row and added in sequential order (bit-identical to the torch path), then, where the
  rule's finish has no matmul, ``h_v = act(self_v + norm(a'_v) + b)`` written and compared bit-for-bit
  while the row is hot;
* ``gather_mean_self`` / ``gather_f32`` / ``store_changed``: the gathers and the store (with the stop
  condition of propagation) around a finish that needs a GEMM;
* ``gat_aggregate``: GAT's softmax and weighted sum per row, without per-edge temporaries;
* graph edits: ``unique_live`` (bitmap dedupe), ``lookup_direct`` (ids to slots), ``append_need`` /
  ``block_append_pair`` (adjacency appends, both directions at once), ``remove_pairs`` (removals by
  one scan of each touched block), ``gather_blocks`` (CSR of a set of blocks).

Row loops prefetch a few rows ahead (``prefetch_row``, an LLVM intrinsic): the rows are scattered over
tables far larger than the caches.  Parallel kernels use at most torch's thread count
(:func:`use_threads`).  ``CLUSTERGNN_KERNELS=torch`` (or :func:`disabled`) selects the plain
numpy/torch path, which is also the CUDA path; the tests hold both to DGL.  Without numba installed,
the plain path is used.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

import numpy as np

# Compiled kernels are cached next to this file; where that is read-only (an installed package in a
# locked-down image) and no cache directory is configured, use a temporary one instead.
if "NUMBA_CACHE_DIR" not in os.environ and not os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
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
        fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(_ir.VoidType(), [i8p, i32, i32, i32]),
                                             "llvm.prefetch.p0")
        for line in range(16):
            off = context.get_constant(_types.intp, line * 64)
            with builder.if_then(builder.icmp_signed("<", off, nbytes)):
                builder.call(fn, [builder.gep(base, [off]), _ir.Constant(i32, 0), _ir.Constant(i32, 3),
                                  _ir.Constant(i32, 1)])

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

    _jit = numba.njit(cache=True, nogil=True, boundscheck=False)
    _pjit = numba.njit(cache=True, nogil=True, boundscheck=False, parallel=True)

    @_jit
    def _prefetch_ahead(table, rows, i):  # pragma: no cover - jitted
        """Prefetch the row of ``table`` that a row loop at ``i`` reaches ``PREFETCH_AHEAD`` steps later."""
        if i + PREFETCH_AHEAD < rows.shape[0]:
            prefetch_row(table, rows[i + PREFETCH_AHEAD])

    @_jit
    def gather_f32(agg, rows, out):  # pragma: no cover - jitted
        d = agg.shape[1]
        n = rows.shape[0]
        for i in range(n):
            _prefetch_ahead(agg, rows, i)
            r = rows[i]
            for k in range(d):
                out[i, k] = np.float32(agg[r, k])

    @_jit
    def store_changed(h, rows, out, relu, changed):  # pragma: no cover - jitted
        """``h[rows] = relu(out) if relu else out``, flagging the rows that changed bit-for-bit."""
        d = h.shape[1]
        n = rows.shape[0]
        for i in range(n):
            _prefetch_ahead(h, rows, i)
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

    @_pjit
    def gather_mean_self(agg, selfc, rows, deg, neigh, selfv):  # pragma: no cover - jitted
        """``neigh[i] = float32(agg[r] / max(deg_i, 1))`` (float64 division, as the torch finish) and
        ``selfv[i] = selfc[r]`` for ``r = rows[i]``: the inputs of SAGE-mean's ``self + neigh @ W^T``."""
        d, ds = agg.shape[1], selfc.shape[1]
        n = rows.shape[0]
        for i in numba.prange(n):
            _prefetch_ahead(agg, rows, i)
            _prefetch_ahead(selfc, rows, i)
            r = rows[i]
            dg = max(deg[i], 1)
            for k in range(d):
                neigh[i, k] = np.float32(agg[r, k] / dg)
            for k in range(ds):
                selfv[i, k] = selfc[r, k]

    _DEBRUIJN = np.array([0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51,
                          43, 22, 45, 39, 33, 30, 24, 18, 12, 5, 63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21,
                          44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6], dtype=np.int64)

    @_jit
    def unique_live(values, live, bits):  # pragma: no cover - jitted
        """Sorted distinct ``values`` with ``live[v]``, through a bitmap: set a bit per value, then read
        the set bits back word by word (de Bruijn bit scan), clearing them.  ``bits`` is an all-zero
        ``uint64`` scratch of ``ceil(len(live) / 64)`` words (left all-zero).  O(len(values) + words):
        several times faster than a sort-based unique, and the rows come out sorted for free."""
        lo = bits.shape[0]
        hi = 0
        for i in range(values.shape[0]):
            v = values[i]
            w = v >> 6
            bits[w] |= np.uint64(1) << np.uint64(v & 63)
            lo = min(lo, w)
            hi = max(hi, w + 1)
        out = np.empty(values.shape[0], dtype=np.int64)
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
        return out[:n]

    @_jit
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

    @_jit
    def _count_owners(owners, count):  # pragma: no cover - jitted
        for i in range(owners.shape[0]):
            count[owners[i]] += 1

    @_jit
    def _grown_cap(length, cap, o, c, min_block):  # pragma: no cover - jitted
        """The capacity block ``o`` moves to when ``c`` entries are appended (0: it has room)."""
        return max(length[o] + c, 2 * cap[o], min_block) if length[o] + c > cap[o] else 0

    @_jit
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

    @_jit
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

    @_pjit
    def block_append_pair(in_start, in_length, in_cap, in_pool, in_used, in_count,
                          out_start, out_length, out_cap, out_pool, out_used, out_count,
                          src, dst, min_block, result):  # pragma: no cover - jitted
        """Edges ``src -> dst`` appended to the in-blocks (owner ``dst``) and the out-blocks (owner ``src``)
        at once, one adjacency per core (they share nothing).  ``result`` gets ``block_append``'s
        ``(used, garbage)`` for the in-side, then the out-side."""
        for side in numba.prange(2):
            if side == 0:
                u, g = block_append(in_start, in_length, in_cap, in_pool, in_used, dst, src, in_count, min_block)
            else:
                u, g = block_append(out_start, out_length, out_cap, out_pool, out_used, src, dst, out_count,
                                    min_block)
            result[2 * side] = u
            result[2 * side + 1] = g

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

    gather_blocks = _pjit(_gather_blocks)  # a whole graph's in-edges (full recompute)
    gather_blocks_serial = _jit(_gather_blocks)  # a batch's few blocks: not worth waking the workers

    # finish kinds: how the float64 aggregate becomes the neighbour term (rules.LayerRule.fused_finish)
    SUM, MEAN, SYM_NORM, RIGHT_NORM = 0, 1, 2, 3

    @_jit
    def _finish_row(h, r, agg, dg, kind, selfc, has_self, bias, has_bias, relu):  # pragma: no cover - jitted
        """``h[r] = act(self[r] + norm(agg[r], deg) + bias)``; returns whether ``h[r]`` changed bit-for-bit.

        The arithmetic matches the rules' torch ``finish`` step for step: the mean divides in float64 and
        rounds once; the GraphConv norms round the sum to float32 and scale it in float32."""
        d = h.shape[1]
        dg = max(dg, 1)
        if kind == 2:
            c = np.float32(1.0) / np.sqrt(np.float32(dg))
        else:
            c = np.float32(1.0) / np.float32(dg)
        diff = False
        for k in range(d):
            if kind == 1:
                v = np.float32(agg[r, k] / dg)
            elif kind == 0:
                v = np.float32(agg[r, k])
            else:
                v = np.float32(agg[r, k]) * c
            if has_self:
                v = selfc[r, k] + v
            if has_bias:
                v = v + bias[k]
            if relu and v < 0:
                v = np.float32(0.0)
            if h[r, k] != v:
                diff = True
            h[r, k] = v
        return diff

    def _sum_rows(agg, msg, rows, add_src, add_dst, rem_src, rem_dst, srcs, m_new, de_ptr, de, posmap,
                  finish, h, deg, kind, selfc, bias, relu, changed):  # pragma: no cover - jitted
        """A sum layer's delta, and (``finish``) each affected row's output, in one pass over the rows.

        The terms (E+, E-, then changed messages in source order, each widened to float64) are bucketed
        by destination row with a counting sort (O(contributions + rows)), so each affected row of the
        float64 table is loaded once and updated in cache, the rows run in parallel (no two workers share
        a row), and each row is finished (``_finish_row``) while it is hot.  A row's terms are added in
        the order a sequential scatter adds them, so the sums are bit-identical to the torch path's.
        ``de`` lists the out-neighbours of ``srcs[j]`` at ``de[de_ptr[j]:de_ptr[j+1]]``; ``deg`` is each
        row's in-degree.  Terms for rows outside ``rows`` (vertices removed by the batch, cleared
        afterwards) are added serially.  ``posmap`` is an all -1 scratch array (left all -1).
        """
        d = agg.shape[1]
        n = rows.shape[0]
        na, nr, ne = add_src.shape[0], rem_src.shape[0], de.shape[0]
        for i in range(n):
            posmap[rows[i]] = i
        dm = np.empty((srcs.shape[0], d), dtype=np.float64)
        for j in range(srcs.shape[0]):  # small: one parallel region per call is what costs
            u = srcs[j]
            for k in range(d):
                dm[j, k] = np.float64(m_new[j, k]) - np.float64(msg[u, k])
        start = np.zeros(n + 1, dtype=np.int64)
        total = na + nr + ne
        pos = np.empty(total, dtype=np.int64)
        se_pos = np.empty(ne, dtype=np.int64)  # the source (index into srcs) of each out-edge entry
        j = 0
        for c in range(total):
            if c < na:
                v = add_dst[c]
            elif c < na + nr:
                v = rem_dst[c - na]
            else:
                e = c - na - nr
                while e >= de_ptr[j + 1]:
                    j += 1
                se_pos[e] = j
                v = de[e]
            p = posmap[v]
            pos[c] = p
            if p >= 0:
                start[p + 1] += 1
            elif c < na:
                for k in range(d):
                    agg[v, k] += np.float64(msg[add_src[c], k])
            elif c < na + nr:
                for k in range(d):
                    agg[v, k] -= np.float64(msg[rem_src[c - na], k])
            else:
                for k in range(d):
                    agg[v, k] += dm[j, k]
        for i in range(n):
            start[i + 1] += start[i]
        fill = start[:n].copy()
        ids = np.empty(start[n], dtype=np.int64)
        for c in range(total):
            p = pos[c]
            if p >= 0:
                ids[fill[p]] = c
                fill[p] += 1
        has_self = selfc.shape[0] > 0
        has_bias = bias.shape[0] > 0
        for i in numba.prange(n):
            if i + PREFETCH_AHEAD < n:
                ahead = rows[i + PREFETCH_AHEAD]
                prefetch_row(agg, ahead)
                if finish:
                    prefetch_row(h, ahead)
                    if has_self:
                        prefetch_row(selfc, ahead)
            r = rows[i]
            for t in range(start[i], start[i + 1]):
                c = ids[t]
                if c < na:
                    u = add_src[c]
                    for k in range(d):
                        agg[r, k] += np.float64(msg[u, k])
                elif c < na + nr:
                    u = rem_src[c - na]
                    for k in range(d):
                        agg[r, k] -= np.float64(msg[u, k])
                else:
                    j = se_pos[c - na - nr]
                    for k in range(d):
                        agg[r, k] += dm[j, k]
            if finish:
                changed[i] = _finish_row(h, r, agg, deg[i], kind, selfc, has_self, bias, has_bias, relu)
        for i in range(n):
            posmap[rows[i]] = -1
        for j in range(srcs.shape[0]):
            u = srcs[j]
            for k in range(d):
                msg[u, k] = m_new[j, k]

    # on all cores even for small batches: a one-core variant below a size threshold measured slower
    # (2.6 vs 1.8 ms at 256 edges, 0.45 vs 0.36 ms at 16), as the idle OpenMP workers then fall asleep
    # and the next parallel kernel pays to wake them
    sum_rows = _pjit(_sum_rows)

    @_jit
    def _gat_logit(msg, er, u, v, col, h, slope):  # pragma: no cover - jitted
        """``LeakyReLU(el_u + er_v)`` of head ``h`` (``el_u = msg[u, col]``), in float32."""
        x = msg[u, col] + er[v, h]
        return x * slope if x < 0 else x

    @_pjit
    def gat_aggregate(msg, er, indptr, src, heads, f, slope, out):  # pragma: no cover - jitted
        """GAT's attention-weighted sum for ``n`` rows, fused (no per-edge temporaries):

            e_uv = LeakyReLU(el_u + er_v),  alpha_uv = softmax_{u->v}(e_uv),  out_v = sum_u alpha_uv z_u

        per head, with ``msg[u] = [z_u (heads * f) | el_u (heads)]`` and row ``v``'s in-edges
        ``src[indptr[v]:indptr[v+1]]``.  The softmax subtracts the row maximum as DGL's edge_softmax
        does; the weighted sum is normalised once at the end (sum_u w_u z_u / sum_u w_u), which differs
        from DGL's order only in rounding.  Rows without in-edges get 0, as in DGL."""
        hf = heads * f
        n = indptr.shape[0] - 1
        sl = np.float32(slope)
        chunk = 256
        for c in numba.prange((n + chunk - 1) // chunk):
            acc = np.empty(hf, dtype=np.float32)  # per chunk of rows: a private, unaliased accumulator
            mx = np.empty(heads, dtype=np.float32)
            den = np.empty(heads, dtype=np.float32)
            w = np.empty(heads, dtype=np.float32)
            for v in range(c * chunk, min(n, (c + 1) * chunk)):
                s0, s1 = indptr[v], indptr[v + 1]
                acc[:] = 0.0
                if s1 > s0:
                    mx[:] = -np.inf
                    den[:] = 0.0
                    for e in range(s0, s1):
                        for h in range(heads):
                            mx[h] = max(mx[h], _gat_logit(msg, er, src[e], v, hf + h, h, sl))
                    for e in range(s0, s1):
                        u = src[e]
                        for h in range(heads):
                            w[h] = np.exp(_gat_logit(msg, er, u, v, hf + h, h, sl) - mx[h])
                            den[h] += w[h]
                        for h in range(heads):
                            wh = w[h]
                            base = h * f
                            for k in range(f):
                                acc[base + k] += wh * msg[u, base + k]
                    for h in range(heads):
                        inv = np.float32(1.0) / den[h]
                        base = h * f
                        for k in range(f):
                            acc[base + k] *= inv
                for k in range(hf):
                    out[v, k] = acc[k]


_warm = False


def use_threads(n: int) -> None:
    """Run the parallel kernels on ``n`` threads at most (an engine passes torch's thread count, so a
    process that shares the machine with others, like a partition owner with ``torch.set_num_threads(1)``,
    does not run two busy-waiting thread pools per process on the same cores)."""
    if AVAILABLE:
        numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel for the argument types the engine
    passes, once per process, so that an engine's first batch does not pay seconds of compilation."""
    global _warm
    if _warm or not _ENABLED:
        return
    f32, f64, i64 = np.float32, np.float64, np.int64
    one = np.zeros(1, dtype=i64)
    t32 = np.zeros((2, 2), dtype=f32)
    changed = np.zeros(1, dtype=np.bool_)
    posmap = np.full(2, -1, dtype=i64)
    for finish, kind, selfc, bias in ((True, 1, t32, np.zeros(0, f32)), (False, 0, np.zeros((0, 0), f32), np.zeros(2, f32))):
        sum_rows(np.zeros((2, 2), f64), t32.copy(), one, one, one, one, one, one, np.zeros((1, 2), f32),
                 np.array([0, 1], dtype=i64), one, posmap, finish, t32.copy(), one, kind, selfc, bias, True, changed)
    gather_f32(np.zeros((2, 2), f64), one, np.zeros((1, 2), f32))
    store_changed(t32.copy(), one, np.zeros((1, 2), f32), True, changed)
    gather_mean_self(np.zeros((2, 2), f64), t32, one, one, np.zeros((1, 2), f32), np.zeros((1, 2), f32))
    unique_live(one, np.ones(2, dtype=np.bool_), np.zeros(1, dtype=np.uint64))
    lookup_direct(np.zeros(2, dtype=np.int32), one, np.zeros(1, dtype=i64))
    count = np.zeros(2, dtype=i64)
    append_need(np.zeros(2, i64), np.zeros(2, i64), one, count, 4)
    res = np.zeros(4, dtype=i64)
    block_append_pair(np.zeros(2, i64), np.zeros(2, i64), np.zeros(2, i64), np.zeros(16, np.int32), 0, count,
                      np.zeros(2, i64), np.zeros(2, i64), np.zeros(2, i64), np.zeros(16, np.int32), 0, count.copy(),
                      one, one, 4, res)
    for kernel in (gather_blocks, gather_blocks_serial):
        kernel(np.zeros(2, i64), np.zeros(2, i64), np.zeros(4, np.int32), one, np.zeros(2, i64), np.zeros(0, i64))
    gat_aggregate(np.zeros((2, 3), f32), np.zeros((1, 1), f32), np.array([0, 1], dtype=i64), one, 1, 2, 0.2,
                  np.zeros((1, 2), f32))
    for apply in (False, True):
        remove_pairs(np.zeros(2, i64), np.zeros(2, i64), np.zeros(4, np.int32), np.zeros(1, i64), one, np.array([0, 1], i64),
                     np.zeros(1, i64), apply)
    _warm = True


if AVAILABLE:

    @_pjit
    def remove_pairs(start, length, pool, keys, want, gptr, avail, apply):  # pragma: no cover - jitted
        """Count, and (``apply``) remove, entries of the blocks named by ``keys``.

        ``keys`` are the distinct requested ``owner << 32 | neighbour`` pairs, sorted; ``want[k]`` copies
        of pair ``k`` are to go; ``keys[gptr[g]:gptr[g+1]]`` share one owner.  Every owner's block is
        scanned once (the neighbour looked up among that owner's requested pairs by binary search), so a
        batch's removals cost O(sum of the touched blocks), with no gather or sort of them.  Counting
        fills ``avail``; removing drops, for each pair, its first ``want[k]`` copies in block order (as
        ``BlockAdjacency.find`` does) and closes the gaps."""
        for g in numba.prange(gptr.shape[0] - 1):
            k0, k1 = gptr[g], gptr[g + 1]
            o = keys[k0] >> 32
            s, n = start[o], length[o]
            taken = np.zeros(k1 - k0, dtype=np.int64)
            w = 0
            for i in range(n):
                v = np.int64(pool[s + i])
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
                    pool[s + w] = pool[s + i]
                    w += 1
            if apply:
                length[o] = w
