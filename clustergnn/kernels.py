"""Segment kernels shared by every incremental rule: plain torch, so they run on CPU and GPU alike.

Edges reach these functions as ``(src, seg)`` pairs: ``src`` indexes a message table and ``seg`` is the
row (``0..n_rows-1``) the edge contributes to.  Callers gather edges destination-major, so ``seg`` is
sorted, which lets sums go through a CSR sparse matrix product instead of materialising ``(E, D)``.
"""

from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

_CHUNK_ELEMS = 1 << 24  # bound on gathered (E, D) temporaries: 64 MiB of fp32
# On CPU, above this many edges DGL's multithreaded SpMM (gspmm) beats torch's CSR product several
# times over (2.5M edges x 128: 27 ms vs 130 ms here); below it, building DGL's graph costs more.  On
# CUDA the torch path (cuSPARSE) is used: DGL has no CUDA build on PyPI.
DGL_MIN_EDGES = 32768


class EdgeIndex:
    """In-edges of ``n_rows`` rows, row-major: ``src[indptr[r]:indptr[r+1]]`` are row ``r``'s sources.

    The per-edge row ids (``seg``) and DGL's graph object are derived on first use and cached, so the
    layers and heads that share an edge set build them once."""

    def __init__(self, src: torch.Tensor, indptr: torch.Tensor) -> None:
        self.src = src
        self.indptr = indptr
        self._seg: torch.Tensor | None = None
        self._block = None
        # False: the block's edge ids are made for it alone and go with it (a full recompute's, every
        # edge of the graph: not worth keeping for the life of the process, docs/engine.md)
        self.cache_ids = True

    @classmethod
    def from_counts(cls, src: torch.Tensor, counts: torch.Tensor) -> EdgeIndex:
        indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=src.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        return cls(src, indptr)

    @classmethod
    def from_sorted_rows(cls, src: torch.Tensor, seg: torch.Tensor, n_rows: int) -> EdgeIndex:
        ei = cls.from_counts(src, torch.bincount(seg, minlength=n_rows))
        ei._seg = seg
        return ei

    @property
    def n_rows(self) -> int:
        return self.indptr.numel() - 1

    @property
    def n_edges(self) -> int:
        return self.src.numel()

    @property
    def seg(self) -> torch.Tensor:
        if self._seg is None:
            rows = torch.arange(self.n_rows, device=self.src.device)
            self._seg = torch.repeat_interleave(rows, self.indptr[1:] - self.indptr[:-1])
        return self._seg

    def block(self, n_src: int):
        if self._block is None or self._block.num_src_nodes() != n_src:
            from clustergnn._dgl import dgl

            # Explicit edge ids (0..E-1, a view of a shared arange): without them DGL 2.1 switches its CPU
            # SpMM to LIBXSMM kernels, which segfaulted here on R-MAT scale 20 (and have known wrong-output
            # bugs: dmlc/dgl#3471, #5960).
            n = self.n_edges
            eids = _arange(n, self.src.dtype) if self.cache_ids else torch.arange(n, dtype=self.src.dtype)
            self._block = dgl.create_block(
                ("csc", (self.indptr, self.src, eids)), num_src_nodes=n_src, num_dst_nodes=self.n_rows
            )
        return self._block


_ARANGE: dict[torch.dtype, torch.Tensor] = {}


def _arange(n: int, dtype: torch.dtype) -> torch.Tensor:
    """``arange(n)`` as a prefix of a cached, growing arange (no allocation per call)."""
    cur = _ARANGE.get(dtype)
    if cur is None or cur.numel() < n:
        cur = torch.arange(max(n, 2 * (cur.numel() if cur is not None else 0)), dtype=dtype)
        _ARANGE[dtype] = cur
    return cur[:n]


def cached_aranges() -> dict[str, torch.Tensor]:
    """The process-wide aranges :func:`_arange` keeps, by dtype (``edge_arange.int64``): for memory reports."""
    return {f"edge_arange.{str(k).removeprefix('torch.')}": v for k, v in _ARANGE.items()}


def _dgl_ops():
    """``dgl.ops``, imported on first use and through :mod:`clustergnn._dgl` (its workaround for our torch:
    a plain ``import dgl`` fails there).  A process that only runs rules (a partition owner) imports DGL
    only when a segment reaches ``DGL_MIN_EDGES``."""
    from clustergnn._dgl import dgl

    return dgl.ops


def _use_dgl(table: torch.Tensor, n_edges: int) -> bool:
    return table.device.type == "cpu" and n_edges >= DGL_MIN_EDGES


def segment_sum(table: torch.Tensor, edges: EdgeIndex, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``out[r] = sum_{e in row r} weight[e] * table[src[e]]``.

    Shapes: table ``(N, D)``, weight ``(E,)``; out ``(n_rows, D)`` in ``table``'s dtype.
    """
    n_rows, d = edges.n_rows, table.shape[1]
    if edges.n_edges == 0 or n_rows == 0:
        return table.new_zeros(n_rows, d)
    if _use_dgl(table, edges.n_edges):
        ops = _dgl_ops()
        block = edges.block(table.shape[0])
        if weight is None:
            return ops.copy_u_sum(block, table.contiguous())
        return ops.u_mul_e_sum(block, table.contiguous(), weight.to(table.dtype).unsqueeze(1))
    ones = torch.ones(edges.n_edges, dtype=table.dtype, device=table.device) if weight is None else None
    vals = weight.to(table.dtype) if weight is not None else ones
    a = torch.sparse_csr_tensor(edges.indptr, edges.src, vals, size=(n_rows, table.shape[0]), check_invariants=False)
    return a @ table


def edge_add(src_vals: torch.Tensor, dst_vals: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
    """``out[e] = src_vals[src[e]] + dst_vals[seg[e]]`` (GAT's attention logits, DGL's ``u_add_v``)."""
    if _use_dgl(src_vals, edges.n_edges) and edges.n_rows:
        ops = _dgl_ops()
        return ops.u_add_v(edges.block(src_vals.shape[0]), src_vals.contiguous(), dst_vals.contiguous())
    return src_vals[edges.src] + dst_vals[edges.seg]


def segment_sum_heads(table: torch.Tensor, edges: EdgeIndex, weight: torch.Tensor) -> torch.Tensor:
    """Per-head weighted sums: table ``(N, H, F)``, weight ``(E, H)`` -> ``(n_rows, H * F)`` (GAT)."""
    n, h, f = table.shape
    if _use_dgl(table, edges.n_edges) and edges.n_rows:
        ops = _dgl_ops()
        out = ops.u_mul_e_sum(edges.block(n), table.contiguous(), weight.to(table.dtype).unsqueeze(2))
        return out.reshape(edges.n_rows, h * f)
    return torch.cat([segment_sum(table[:, k], edges, weight[:, k]) for k in range(h)], dim=1)


def segment_max(table: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
    """``out[r] = max_{e in row r} table[src[e]]`` elementwise; rows without edges are 0 (as in DGL)."""
    n_rows, d = edges.n_rows, table.shape[1]
    if _use_dgl(table, edges.n_edges) and n_rows:
        ops = _dgl_ops()
        out = ops.copy_u_max(edges.block(table.shape[0]), table.contiguous())
        return out.masked_fill_(torch.isneginf(out), 0.0)  # raw gspmm leaves edgeless rows at -inf
    out = torch.full((n_rows, d), float("-inf"), dtype=table.dtype, device=table.device)
    step = max(1, _CHUNK_ELEMS // max(d, 1))
    src, seg = edges.src, edges.seg
    for i in range(0, src.numel(), step):
        s, g = src[i : i + step], seg[i : i + step]
        out.scatter_reduce_(0, g.unsqueeze(1).expand(-1, d), table[s], reduce="amax", include_self=True)
    return out.masked_fill_(torch.isneginf(out), 0.0)


def segment_softmax(scores: torch.Tensor, edges: EdgeIndex, n_src: int) -> torch.Tensor:
    """Softmax of ``scores (E, H)`` over the edges of each row (DGL's ``edge_softmax``)."""
    if _use_dgl(scores, edges.n_edges) and edges.n_rows:
        from dgl.ops import edge_softmax

        return edge_softmax(edges.block(n_src), scores)
    n_rows, h, seg = edges.n_rows, scores.shape[1], edges.seg
    idx = seg.unsqueeze(1).expand(-1, h)
    mx = torch.full((n_rows, h), float("-inf"), dtype=scores.dtype, device=scores.device)
    mx.scatter_reduce_(0, idx, scores, reduce="amax", include_self=True)
    ex = torch.exp(scores - mx[seg])
    den = torch.zeros((n_rows, h), dtype=scores.dtype, device=scores.device).index_add_(0, seg, ex)
    return ex / den[seg]
