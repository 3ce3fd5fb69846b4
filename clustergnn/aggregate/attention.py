"""The attention family: GAT.

``dgl.nn.GATConv`` (Velickovic et al., https://arxiv.org/abs/1710.10903), per head ``k`` of ``H``
(``F`` features each), with the cached message ``msg[u] = [z_u (H * F) | el_u (H)]``, ``z_u = W h_u``,
``el_u = a_l . z_u`` and ``er_v = a_r . z_v``:

    e_uv = LeakyReLU(el_u + er_v),   alpha_uv = softmax_{u->v}(e_uv),   out_v = sum_u alpha_uv z_u

Shapes: ``msg`` ``(N, H * F + H)`` float32, ``er`` ``(n_rows, H)``, result ``(n_rows, H * F)``.

Why it is exact: the softmax couples all in-edges of a row, so there is no incremental update; every
affected row is recomputed from its in-neighbours' cached messages (:func:`recompute`), which is the
definition.  Only the per-vertex messages are incremental (``z_u`` changes only when ``h_u`` does).

Two variants of the recompute, chosen here: the fused numba kernel ``gat_aggregate`` (float32 tables on
a CPU engine with kernels enabled) and the torch path (DGL's ``u_add_v`` / ``edge_softmax`` /
``u_mul_e_sum`` order).  The fused kernel normalises the weighted sum once at the end
(``sum_u w_u z_u / sum_u w_u``), so the two differ in rounding (about 1e-7 relative), never bit for bit
by promise; ``tests/core/test_fused_bit_identity.py`` holds them within 1e-6.

Example::

    er = (dst_msg[:, :H * F].view(-1, H, F) * attn_r).sum(-1)
    out = recompute(msg, edges, er, H, F, slope=0.2)       # (edges.n_rows, H * F)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clustergnn import cpu_kernels
from clustergnn.kernels import EdgeIndex, edge_add, segment_softmax, segment_sum_heads


def recompute(msg: torch.Tensor, edges: EdgeIndex, er: torch.Tensor, heads: int, f: int, slope: float) -> torch.Tensor:
    """The attention-weighted sum of ``edges.n_rows`` rows from their in-edges (sources index ``msg``)."""
    hf = heads * f
    if msg.device.type == "cpu" and cpu_kernels.enabled() and msg.dtype == torch.float32:
        out = torch.empty(edges.n_rows, hf)
        gat_aggregate(
            msg.contiguous().numpy(),
            er.contiguous().numpy(),
            edges.indptr.numpy(),
            edges.src.numpy(),
            heads,
            f,
            float(slope),
            out.numpy(),
        )
        return out
    e = F.leaky_relu(edge_add(msg[:, hf:], er, edges), slope)
    a = segment_softmax(e, edges, msg.shape[0])  # (E, H)
    return segment_sum_heads(msg[:, :hf].reshape(-1, heads, f), edges, a)


if cpu_kernels.AVAILABLE:
    import numba

    from clustergnn.cpu_kernels import jit, pjit

    @jit
    def _gat_logit(msg, er, u, v, col, h, slope):  # pragma: no cover - jitted
        """``LeakyReLU(el_u + er_v)`` of head ``h`` (``el_u = msg[u, col]``), in float32."""
        x = msg[u, col] + er[v, h]
        return x * slope if x < 0 else x

    @pjit
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


def warm_up_kernels() -> None:
    """Compile (or load from the disk cache) this family's kernel for the engine's argument types."""
    f32 = np.float32
    for ix in (np.int64, np.int32):  # EdgeIndex: int64, or int32 where the ids fit
        gat_aggregate(
            np.zeros((2, 3), f32),
            np.zeros((1, 1), f32),
            np.array([0, 1], dtype=ix),
            np.zeros(1, dtype=ix),
            1,
            2,
            0.2,
            np.zeros((1, 2), f32),
        )
