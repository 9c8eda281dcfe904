"""The mathematics of Energy-Regularized Spatial Masking (ERSM, arXiv 2604.06893), as plain functions.

A binary mask ``m`` over the H x W tokens of a feature map has the energy

    E(m) = sum_i u_i m_i + beta * sum_{i~j} [m_i != m_j]

with unary energy ``u = alpha - s`` (``s`` the learned importance) and a Potts coherence term over
the 4- or 8-neighbourhood. It is minimised approximately by T unrolled mean-field steps

    q0 = sigmoid(-u / tau);  q(t+1)_i = sigmoid(-(u_i + beta * sum_j (1 - 2 q(t)_j)) / tau)

whose argument ``e_i = u_i + beta * sum_j (1 - 2 q_j)`` is the token energy: the change in E when
token i is switched on, so lower means more important and ``e_i < 0`` means "keep".
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .config import BORDERS

__all__ = [
    "neighbour_kernel",
    "neighbour_sum",
    "mean_field",
    "potts_energy",
    "straight_through",
    "neighbour_differences",
    "neighbour_offsets",
    "weighted_neighbour_sum",
    "pair_weights",
    "shifted_neighbour_sum",
    "border_scale",
    "BORDERS",
]


def neighbour_kernel(neighbourhood: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed 3x3 kernel that sums a token's neighbours (shape (1, 1, 3, 3)).

    Args:
        neighbourhood: 4 (up, down, left, right) or 8 (adds the diagonals).
        dtype: dtype of the kernel.
    """
    if neighbourhood == 4:
        k = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=dtype)
    elif neighbourhood == 8:
        k = torch.ones(3, 3, dtype=dtype)
        k[1, 1] = 0.0
    else:
        raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood}")
    return k.view(1, 1, 3, 3)


def neighbour_sum(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Sum over each token's neighbours of a (B, 1, H, W) map; tokens past the border count as 0."""
    return F.conv2d(x, kernel.to(dtype=x.dtype, device=x.device), padding=1)


def neighbour_offsets(neighbourhood: int) -> list[tuple[int, int]]:
    """(dy, dx) of each neighbour direction, in the order pairwise weight channels use."""
    four = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if neighbourhood == 4:
        return four
    if neighbourhood == 8:
        return four + [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    raise ValueError(f"neighbourhood must be 4 or 8, got {neighbourhood}")


def shifted_neighbour_sum(x: torch.Tensor, neighbourhood: int) -> torch.Tensor:
    """sum over the 4 or 8 neighbours of a (B, 1, H, W) map, tokens past the border counting as 0.

    Equal to :func:`neighbour_sum` with :func:`neighbour_kernel`, but made of shifted adds: a 3x3
    convolution on a single channel is dominated by the convolution library's per-call overhead.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    total = None
    for dy, dx in neighbour_offsets(neighbourhood):
        part = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        total = part if total is None else total + part
    return total


def weighted_neighbour_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij x_j for a (B, 1, H, W) map and per-direction weights (B, K, H, W), K = 4 or 8.

    ``weights[:, k]`` holds w between token i and its neighbour at ``neighbour_offsets(K)[k]``.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    total = torch.zeros_like(x)
    for k, (dy, dx) in enumerate(neighbour_offsets(weights.shape[1])):
        total = total + weights[:, k : k + 1] * padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    return total


def border_scale(height: int, width: int, neighbourhood: int, like: torch.Tensor) -> torch.Tensor:
    """K / (number of neighbours inside the grid) per token, shape (1, 1, H, W): 1 inside, > 1 at the border."""
    inside = shifted_neighbour_sum(torch.ones(1, 1, height, width, dtype=like.dtype, device=like.device),
                                   neighbourhood)
    return neighbourhood / inside.clamp(min=1.0)


def mean_field(
    unary: torch.Tensor,
    beta: float,
    tau: float,
    steps: int,
    neighbourhood: int = 4,
    pairwise_weights: torch.Tensor | None = None,
    border: str = "zero",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unrolled mean-field minimisation of the Potts energy.

    Args:
        unary: unary energies u, shape (B, 1, H, W).
        beta: strength of the pairwise term.
        tau: temperature of the sigmoid.
        steps: number of mean-field updates T after the initial q0.
        neighbourhood: 4 or 8.
        pairwise_weights: optional w_ij per direction, shape (B, K, H, W) (see
            :func:`weighted_neighbour_sum`); ``None`` means w_ij = 1 (the plain Potts term).
        border: ``"zero"``: neighbours past the border are absent (the Potts energy on the grid, so a
            border token of an open mask has a higher energy, by beta per missing neighbour, than an
            interior token with the same unary energy). ``"normalise"``: each token's pairwise pull is
            scaled by K / (its neighbours inside the grid), so the position on the grid does not shift
            the energy ranking; interior tokens are unchanged.

    Returns:
        ``(q, e)``: keep probabilities after T steps and the token energies computed from them.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {', '.join(BORDERS)}, got {border!r}")
    needs_grad = unary.requires_grad or (pairwise_weights is not None and pairwise_weights.requires_grad)
    if not (needs_grad and torch.is_grad_enabled()) and not _tracing():
        return _mean_field_inference(unary, beta, tau, steps, neighbourhood, pairwise_weights, border)
    scale = border_scale(*unary.shape[-2:], neighbourhood, unary) if border == "normalise" else None

    def pull(q: torch.Tensor) -> torch.Tensor:
        if pairwise_weights is None:
            total = shifted_neighbour_sum(1.0 - 2.0 * q, neighbourhood)
        else:
            total = weighted_neighbour_sum(1.0 - 2.0 * q, pairwise_weights)
        return total if scale is None else total * scale

    q = torch.sigmoid(-unary / tau)
    for _ in range(steps):
        q = torch.sigmoid(-(unary + beta * pull(q)) / tau)
    energy = unary + beta * pull(q)
    return q, energy


def potts_energy(mask: torch.Tensor, unary: torch.Tensor, beta: float, neighbourhood: int = 4) -> torch.Tensor:
    """Exact energy E(m) of binary masks, one value per batch element.

    Args:
        mask: binary masks, shape (B, 1, H, W).
        unary: unary energies, shape (B, 1, H, W) or broadcastable.
        beta: strength of the pairwise term.
        neighbourhood: 4 or 8.
    """
    unary_term = (unary * mask).flatten(1).sum(1)
    disagreements = sum(d.flatten(1).sum(1) for d in neighbour_differences(mask, neighbourhood))
    return unary_term + beta * disagreements


def neighbour_differences(q: torch.Tensor, neighbourhood: int = 4) -> list[torch.Tensor]:
    """|q_i - q_j| for every unordered neighbour pair, grouped by direction."""
    diffs = [(q[..., 1:, :] - q[..., :-1, :]).abs(), (q[..., :, 1:] - q[..., :, :-1]).abs()]
    if neighbourhood == 8:
        diffs.append((q[..., 1:, 1:] - q[..., :-1, :-1]).abs())
        diffs.append((q[..., 1:, :-1] - q[..., :-1, 1:]).abs())
    return diffs


def pair_weights(weights: torch.Tensor, neighbourhood: int = 4) -> list[torch.Tensor]:
    """w_ij for every unordered neighbour pair, in the layout of :func:`neighbour_differences`.

    Args:
        weights: per-direction weights (B, K, H, W) as a pairwise term returns them (see
            :func:`weighted_neighbour_sum`).
        neighbourhood: 4 or 8 (the pairs to return; K must cover them).

    Returns:
        One tensor per pair direction, each shaped like the matching entry of
        :func:`neighbour_differences`; a pair's weight is the mean of w_ij (seen from i) and w_ji
        (seen from j), so an asymmetric term still gives one weight per pair.
    """
    index = {offset: k for k, offset in enumerate(neighbour_offsets(weights.shape[1]))}

    def both(a: tuple[int, int], rows_a, cols_a, b: tuple[int, int], rows_b, cols_b) -> torch.Tensor:
        return 0.5 * (weights[:, index[a] : index[a] + 1, rows_a, cols_a]
                      + weights[:, index[b] : index[b] + 1, rows_b, cols_b])

    all_, head, tail = slice(None), slice(None, -1), slice(1, None)
    out = [both((1, 0), head, all_, (-1, 0), tail, all_), both((0, 1), all_, head, (0, -1), all_, tail)]
    if neighbourhood == 8:
        out.append(both((1, 1), head, head, (-1, -1), tail, tail))
        out.append(both((1, -1), head, tail, (-1, 1), tail, head))
    return out


def straight_through(q: torch.Tensor) -> torch.Tensor:
    """Hard mask 1[q >= 0.5] in the forward pass, gradient of q in the backward pass."""
    hard = (q >= 0.5).to(q.dtype)
    # (q - q.detach()) is exactly 0 in the forward pass, so the mask is exactly binary
    return hard + (q - q.detach())


def _tracing() -> bool:
    """An exporter or compiler is recording the ops (ONNX, TorchScript, torch.export/compile): they get the plain
    steps, whose out-of-place ops every exporter reads (the in-place writes into a buffer's views are not)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _mean_field_inference(
    unary: torch.Tensor,
    beta: float,
    tau: float,
    steps: int,
    neighbourhood: int,
    pairwise_weights: torch.Tensor | None,
    border: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mean_field` without autograd, in about half the operations (the same values to float rounding).

    The pull is linear in q: sum_j w_ij (1 - 2 q_j) = n_i - 2 sum_j w_ij q_j, with n_i the (weighted) count of
    i's neighbours inside the grid, so each step is one neighbour sum, one multiply-add and one sigmoid, written
    into the inside of a zero-padded buffer whose shifted views are the neighbours. At batch 1 a mask's
    mean-field steps were 76 small operations (42 now, 3 steps), a third of its time (docs/sparse.md).
    """
    b, _, h, w = unary.shape
    if pairwise_weights is None and h * w <= NEIGHBOUR_MATRIX_MAX_TOKENS:
        return _mean_field_by_matrix(unary, beta, tau, steps, neighbourhood, border)
    k = neighbourhood if pairwise_weights is None else pairwise_weights.shape[1]
    padded = unary.new_zeros(b, 1, h + 2, w + 2)
    inside = padded[..., 1 : h + 1, 1 : w + 1]
    views = [padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in neighbour_offsets(k)]

    def neighbours() -> torch.Tensor:  # sum_j w_ij q_j of the q held inside the buffer
        if pairwise_weights is None:
            total = views[0] + views[1]
            for view in views[2:]:
                total += view
        else:
            total = pairwise_weights[:, :1] * views[0]
            for j, view in enumerate(views[1:], start=1):
                total.addcmul_(pairwise_weights[:, j : j + 1], view)
        return total

    inside.fill_(1.0)
    count = neighbours()
    # energy = base - slope * sum_j w_ij q_j, with the border's rescaling (if any) folded into both
    if border == "normalise":
        scale = border_scale(h, w, neighbourhood, unary)
        base = unary + (beta * scale) * count
        slope = (2.0 * beta) * scale
    else:
        base = unary + beta * count
        slope = 2.0 * beta

    def energy_of_buffer() -> torch.Tensor:
        if isinstance(slope, float):
            return torch.add(base, neighbours(), alpha=-slope)
        return torch.addcmul(base, slope, neighbours(), value=-1.0)

    torch.sigmoid(unary / -tau, out=inside)
    for _ in range(steps):
        torch.sigmoid(energy_of_buffer() / -tau, out=inside)
    return inside.contiguous(), energy_of_buffer()


# grids of at most this many tokens sum the neighbours by one product with an (H*W, H*W) matrix (400: 640 KB in
# float32); the larger ones by shifted views of a padded buffer, whose cost does not grow with the square of the grid
NEIGHBOUR_MATRIX_MAX_TOKENS = 400


@functools.lru_cache(maxsize=64)
def _neighbour_matrix(height: int, width: int, neighbourhood: int, border: str, device: torch.device,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, count): ``(q @ M)_i`` is token i's pull ``sum_j q_j`` over its neighbours inside the grid, scaled as
    ``border`` says; ``count`` (H*W,) is that pull for q = 1 (the neighbours inside the grid, scaled alike)."""
    n = height * width
    matrix = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    for dy, dx in neighbour_offsets(neighbourhood):
        y, x = rows + dy, cols + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        matrix[(y * width + x)[inside], torch.arange(n)[inside]] = 1.0  # column i sums i's neighbours
    count = matrix.sum(0)
    if border == "normalise":
        scale = neighbourhood / count.clamp(min=1.0)
        matrix, count = matrix * scale, count * scale
    return matrix.to(device=device, dtype=dtype), count.to(device=device, dtype=dtype)


def _mean_field_by_matrix(unary: torch.Tensor, beta: float, tau: float, steps: int, neighbourhood: int,
                          border: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_mean_field_inference` of the plain Potts term on a small grid: each step is one matrix product
    (``addmm``: the neighbour sums and the affine map in one op) and one sigmoid, where the buffer's shifted views
    take six ops. At batch 1 a mask's time is its count of small ops (docs/sparse.md)."""
    b, _, h, w = unary.shape
    matrix, count = _neighbour_matrix(h, w, neighbourhood, border, unary.device, unary.dtype)
    u = unary.reshape(b, h * w)
    base = u + beta * count  # energy = base - 2 beta (q @ M)
    # sigmoid(-energy / tau) = sigmoid(-base / tau + (2 beta / tau) (q @ M))
    q = torch.sigmoid(u / -tau)
    if steps:
        start = base / -tau
        for _ in range(steps):
            q = torch.addmm(start, q, matrix, alpha=2.0 * beta / tau).sigmoid_()
    energy = torch.addmm(base, q, matrix, alpha=-2.0 * beta)
    return q.view(b, 1, h, w), energy.view(b, 1, h, w)
