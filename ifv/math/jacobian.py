"""Feature responses y and Gram matrices G = Dy Dy^T of N~ = Agg o N o P (Sec. 2, 2.1, 3.3).

Grad-IFV solves Opt. (3) through M M^T = U^T Z_k G Z_k U and Algorithm 1 through the
eigenpairs of G (Sec. 2.1, 2.2), so each sample reduces to (y, G) and the (n_f, n_p)
Jacobian Dy is never stored: ``response_and_gram`` computes Dy for a few samples at a time
("a single forward and n_f backward passes", Sec. 2.1), contracts it to the n_f x n_f Gram
matrix in float64 and frees it.

``fn`` is any callable mapping parameters v: (B, *shape) to responses y: (B, n_f) whose
samples are independent (network in eval mode); it need not be an ``nn.Module``.
n_p = prod(shape). Gradients are taken w.r.t. v only, so network parameters never
accumulate ``.grad``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm import tqdm

from ifv.math.inverse import symmetric
from ifv.math.objective import ResponseFn

METHODS = ("auto", "loop", "batched", "vmap")
# "auto": the fastest method measured per device type (``make bench``): one backward per
# feature on the CPU, where a batched backward only adds work; the vmapped VJP on CUDA,
# where it turns n_f small backward passes into a few large ones.
AUTO = {"cpu": "loop", "cuda": "vmap"}
# Bytes of one float64 block of Dy rows in the blocked Gram product (independent of
# max_bytes so that G does not depend on the sample chunking).
_GRAM_BLOCK_BYTES = 1 << 27


def pick(method: str, device: torch.device) -> str:
    """The method that runs: ``method``, or for "auto" the one of ``AUTO`` for the device
    type ("loop" where none is listed)."""
    if method not in METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; valid: {', '.join(METHODS)}")
    return AUTO.get(device.type, "loop") if method == "auto" else method


def _check_response(y: Tensor, batch: int) -> int:
    """n_f of a response y: (B, n_f); raises if fn broke the (B, n_f) contract."""
    if y.dim() != 2 or y.shape[0] != batch:
        raise ValueError(f"fn must map (B, *shape) to (B, n_f) with B={batch}, "
                         f"got {tuple(y.shape)}")
    return y.shape[1]


def _jacobian_loop(fn: ResponseFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """One forward, then one backward of y[:, i].sum() per feature i.

    Samples are independent, so the gradient of the batch sum is row i of every sample's
    Dy at once. x: (B, *shape) leaf requiring grad -> y: (B, n_f), Dy: (B, n_f, n_p).
    """
    batch = x.shape[0]
    y = fn(x)
    n_f = _check_response(y, batch)
    dy = x.new_zeros((batch, n_f, x[0].numel()))
    if not y.requires_grad:  # y does not depend on v
        return y.detach(), dy
    for i in range(n_f):
        (g,) = torch.autograd.grad(y[:, i].sum(), x, retain_graph=i < n_f - 1,
                                   allow_unused=True, materialize_grads=True)
        dy[:, i] = g.reshape(batch, -1)
    return y.detach(), dy


def _jacobian_batched(fn: ResponseFn, x: Tensor, cotangents: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """One forward, then is_grads_batched backwards over ``cotangents`` one-hot cotangents
    at a time (None: all n_f at once).

    x: (B, *shape) leaf requiring grad -> y: (B, n_f), Dy: (B, n_f, n_p).
    """
    batch = x.shape[0]
    y = fn(x)
    n_f = _check_response(y, batch)
    dy = x.new_zeros((batch, n_f, x[0].numel()))
    if not y.requires_grad:
        return y.detach(), dy
    eye = torch.eye(n_f, dtype=y.dtype, device=y.device)
    features = cotangents or n_f
    for s in range(0, n_f, features):
        e = min(s + features, n_f)
        cot = eye[s:e, None, :].expand(e - s, batch, n_f)  # (c, B, n_f)
        (g,) = torch.autograd.grad(y, x, grad_outputs=cot, retain_graph=e < n_f,
                                   is_grads_batched=True, allow_unused=True,
                                   materialize_grads=True)  # (c, B, *shape)
        dy[:, s:e] = g.reshape(e - s, batch, -1).transpose(0, 1)
    return y.detach(), dy


def _jacobian_vmap(fn: ResponseFn, x: Tensor, cotangents: int | None = None
                   ) -> tuple[Tensor, Tensor]:
    """torch.func: vjp of the batch, vmapped over ``cotangents`` one-hot cotangents at a
    time (None: all n_f at once).

    x: (B, *shape), detached -> y: (B, n_f), Dy: (B, n_f, n_p). Raises RuntimeError where fn
    has an operation that torch.func cannot transform.
    """
    batch = x.shape[0]
    try:
        y, vjp_fn = torch.func.vjp(fn, x)
        n_f = _check_response(y, batch)
        dy = x.new_empty((batch, n_f, x[0].numel()))
        eye = torch.eye(n_f, dtype=y.dtype, device=y.device)
        features = cotangents or n_f
        for s in range(0, n_f, features):
            e = min(s + features, n_f)
            cot = eye[s:e, None, :].expand(e - s, batch, n_f)  # (c, B, n_f)
            (g,) = torch.func.vmap(vjp_fn)(cot)  # (c, B, *shape)
            dy[:, s:e] = g.reshape(e - s, batch, -1).transpose(0, 1)
    except RuntimeError as err:
        raise RuntimeError("method 'vmap' could not transform fn with torch.func "
                           f"({err}); use method='loop'") from err
    return y.detach(), dy


def jacobian(fn: ResponseFn, v: Tensor, *, method: str = "auto",
             cotangents: int | None = None) -> tuple[Tensor, Tensor]:
    """Responses y = N~(v) and Jacobians Dy = DN~(v) of every sample (Sec. 2, 2.1).

    v: (B, *shape) -> y: (B, n_f) in fn's dtype, Dy: (B, n_f, n_p) in v's dtype, with
    Dy[b, i] the gradient of y[b, i] w.r.t. v[b] flattened. ``method``: "loop" (one
    backward per feature), "batched" (autograd with is_grads_batched over chunks of
    ``cotangents`` features, None: all), "vmap" (torch.func vjp vmapped over the same
    chunks) or "auto" (``AUTO`` for v's device; ``make bench`` measures them). v is not
    modified and may or may not require grad.
    """
    method = pick(method, v.device)
    if method == "vmap":
        # torch.func differentiates at its own level; no_grad keeps the ordinary autograd
        # from recording a graph to the network parameters around it.
        with torch.no_grad():
            return _jacobian_vmap(fn, v.detach(), cotangents)
    x = v.detach().requires_grad_(True)
    with torch.enable_grad():
        if method == "batched":
            return _jacobian_batched(fn, x, cotangents)
        return _jacobian_loop(fn, x)


def gram(dy: Tensor, *, block_bytes: int = _GRAM_BLOCK_BYTES) -> Tensor:
    """G = Dy Dy^T in float64, blocked over features, exactly symmetric (Sec. 2.1).

    dy: (n_f, n_p) of any float dtype -> (n_f, n_f) float64. Only the upper block
    triangle is multiplied; at most two float64 blocks of rows (at most ``block_bytes``
    each, at least one row) exist at once instead of a float64 copy of Dy.
    """
    n_f, n_p = dy.shape
    g = torch.empty((n_f, n_f), dtype=torch.float64, device=dy.device)
    block = max(1, min(n_f, block_bytes // max(1, n_p * 8)))
    n_blocks = math.ceil(n_f / block)
    block = math.ceil(n_f / n_blocks)  # balanced blocks
    edges = [(s, min(s + block, n_f)) for s in range(0, n_f, block)]
    for bi, (s, e) in enumerate(edges):
        a = dy[s:e].to(torch.float64)
        g[s:e, s:e] = a @ a.T
        for s2, e2 in edges[bi + 1:]:
            g[s:e, s2:e2] = a @ dy[s2:e2].to(torch.float64).T
            g[s2:e2, s:e] = g[s:e, s2:e2].T
    return symmetric(g)


def chunk_size(n_f: int, n_p: int, itemsize: int, max_bytes: int) -> int:
    """Samples per chunk whose Dy (chunk * n_f * n_p * itemsize bytes) fits max_bytes (>= 1)."""
    return max(1, max_bytes // max(1, n_f * n_p * itemsize))


def saved_bytes(fn: ResponseFn, v: Tensor) -> int:
    """Bytes autograd saves for the backward of ``fn`` on one sample v: (1, *shape): the
    size of what one cotangent's backward pass works through."""
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = v.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def cotangent_chunk(n_f: int, samples: int, per_sample: int, max_bytes: int) -> int:
    """One-hot cotangents per batched backward of ``samples`` samples such that c copies of
    the backward's intermediates (``per_sample`` bytes each, ``saved_bytes``) fit
    ``max_bytes``: between 1 and n_f."""
    return max(1, min(n_f, max_bytes // max(1, samples * per_sample)))


def response_and_gram(fn: ResponseFn, v: Tensor, *, method: str = "auto",
                      max_bytes: int = 1 << 30, progress: bool = False) -> tuple[Tensor, Tensor]:
    """Responses y and Gram matrices G = Dy Dy^T of every sample, memory-bounded (Sec. 2.1).

    v: (B, *shape) -> y: (B, n_f) float64, G: (B, n_f, n_f) float64, exactly symmetric,
    on v's device. The batch is processed in chunks of samples whose Dy (chunk * n_f * n_p
    * itemsize bytes) fits ``max_bytes`` (at least one sample); each chunk's Dy is freed
    before the next. "batched" and "vmap" push as many one-hot cotangents through one
    backward as fit ``max_bytes`` (``cotangent_chunk``), so their intermediates stay within
    the budget as well. Beyond that, memory is the autograd graph of one chunk plus two
    float64 blocks of ``gram``. G of a sample does not depend on the chunking. ``progress``
    shows a tqdm bar over the chunks. v is not modified.
    """
    method = pick(method, v.device)
    batch = v.shape[0]
    if batch == 0:
        raise ValueError("v must hold at least one sample")
    with torch.no_grad():  # n_f from one sample, to size the chunks
        n_f = _check_response(fn(v[:1].detach()), 1)
    n_p = v[0].numel()
    chunk = min(batch, chunk_size(n_f, n_p, v.element_size(), max_bytes))
    cotangents = (cotangent_chunk(n_f, chunk, saved_bytes(fn, v[:1]), max_bytes)
                  if method != "loop" else None)
    y_all = torch.empty((batch, n_f), dtype=torch.float64, device=v.device)
    g_all = torch.empty((batch, n_f, n_f), dtype=torch.float64, device=v.device)
    starts = range(0, batch, chunk)
    for s in tqdm(starts, desc="Dy Dy^T", unit="chunk", disable=not progress):
        e = min(s + chunk, batch)
        y, dy = jacobian(fn, v[s:e], method=method, cotangents=cotangents)
        y_all[s:e] = y.to(torch.float64)
        for b in range(e - s):
            g_all[s + b] = gram(dy[b])
        del y, dy
    return y_all, g_all
