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


def _dgl_block(src: torch.Tensor, seg: torch.Tensor, n_rows: int, n_src: int):
    from clustergnn._dgl import dgl

    counts = torch.bincount(seg, minlength=n_rows)
    indptr = torch.zeros(n_rows + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    eids = torch.arange(src.numel(), dtype=torch.int64)
    return dgl.create_block(("csc", (indptr, src, eids)), num_src_nodes=n_src, num_dst_nodes=n_rows)


def _use_dgl(table: torch.Tensor, n_edges: int) -> bool:
    return table.device.type == "cpu" and n_edges >= DGL_MIN_EDGES


def segment_sum(
    table: torch.Tensor, src: torch.Tensor, seg: torch.Tensor, n_rows: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[r] = sum_{e: seg[e]=r} weight[e] * table[src[e]]`` for destination-sorted ``seg``.

    Shapes: table ``(N, D)``, src/seg ``(E,)`` int64, out ``(n_rows, D)`` in ``table``'s dtype.
    """
    d = table.shape[1]
    if src.numel() == 0 or n_rows == 0:
        return table.new_zeros(n_rows, d)
    if _use_dgl(table, src.numel()):
        import dgl.ops as ops

        block = _dgl_block(src, seg, n_rows, table.shape[0])
        if weight is None:
            return ops.copy_u_sum(block, table.contiguous())
        return ops.u_mul_e_sum(block, table.contiguous(), weight.to(table.dtype).unsqueeze(1))
    counts = torch.bincount(seg, minlength=n_rows)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=table.device)
    torch.cumsum(counts, 0, out=crow[1:])
    vals = weight.to(table.dtype) if weight is not None else torch.ones(src.numel(), dtype=table.dtype, device=table.device)
    a = torch.sparse_csr_tensor(crow, src, vals, size=(n_rows, table.shape[0]), check_invariants=False)
    return a @ table


def segment_max(table: torch.Tensor, src: torch.Tensor, seg: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``out[r] = max_{e: seg[e]=r} table[src[e]]`` elementwise; rows without edges are 0 (as in DGL)."""
    d = table.shape[1]
    if _use_dgl(table, src.numel()) and n_rows:
        import dgl.ops as ops

        out = ops.copy_u_max(_dgl_block(src, seg, n_rows, table.shape[0]), table.contiguous())
        return out.masked_fill_(torch.isneginf(out), 0.0)  # raw gspmm leaves edgeless rows at -inf
    out = torch.full((n_rows, d), float("-inf"), dtype=table.dtype, device=table.device)
    step = max(1, _CHUNK_ELEMS // max(d, 1))
    for i in range(0, src.numel(), step):
        s, g = src[i : i + step], seg[i : i + step]
        out.scatter_reduce_(0, g.unsqueeze(1).expand(-1, d), table[s], reduce="amax", include_self=True)
    return out.masked_fill_(torch.isneginf(out), 0.0)


def segment_softmax(scores: torch.Tensor, seg: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Softmax of ``scores (E, H)`` over the edges of each segment (DGL's ``edge_softmax``)."""
    h = scores.shape[1]
    idx = seg.unsqueeze(1).expand(-1, h)
    mx = torch.full((n_rows, h), float("-inf"), dtype=scores.dtype, device=scores.device)
    mx.scatter_reduce_(0, idx, scores, reduce="amax", include_self=True)
    ex = torch.exp(scores - mx[seg])
    den = torch.zeros((n_rows, h), dtype=scores.dtype, device=scores.device).index_add_(0, seg, ex)
    return ex / den[seg]
