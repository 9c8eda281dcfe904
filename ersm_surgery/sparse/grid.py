"""Kept tokens of one grid as rows: gather, scatter and the neighbourhood index of a convolution.

A batch's kept tokens on a (h, w) grid are numbered 0..N-1 in (image, row, column) order; the features
of the gated stage are then (N, C) rows. The neighbourhood index of a kxk convolution lists, for each
kept output token and each kernel tap, the input row it reads, or N (a zero row appended to the table)
for a tap on a switched-off or outside token. Under ``mask.gate=stage`` a switched-off token is zero in
the dense computation, so the zero row makes the gathered product equal the dense one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from ..layers.gate import pool_mask

__all__ = ["Grid", "Rows", "GridSet"]


@dataclass(eq=False)
class Grid:
    """The kept tokens of a batch on one (h, w) grid.

    Attributes:
        batch, height, width: the grid's shape.
        index: (N,) flat positions ``(b * h + i) * w + j`` of the kept tokens, ascending.
        image: (N,) the image each kept token belongs to (made on first use, as ``row_of`` and ``within``: at
            batch 1 a grid's setup is its count of small ops, and many grids never need them).
        row_of: (B * h * w,) the row of each position, N where the token is switched off.
    """

    batch: int
    height: int
    width: int
    index: torch.Tensor
    _taps: dict = field(default_factory=dict)

    @classmethod
    def from_mask(cls, keep: torch.Tensor) -> Grid:
        """``keep``: a (B, 1, h, w) 0/1 mask."""
        b, _, h, w = keep.shape
        return cls(b, h, w, keep.reshape(-1).nonzero().squeeze(1))

    @property
    def count(self) -> int:
        return int(self.index.numel())

    @functools.cached_property
    def image(self) -> torch.Tensor:
        if self.batch == 1:
            return torch.zeros_like(self.index)
        return torch.div(self.index, self.height * self.width, rounding_mode="floor")

    @functools.cached_property
    def row_of(self) -> torch.Tensor:
        row_of = torch.full((self.batch * self.height * self.width,), self.count, dtype=torch.long,
                            device=self.index.device)
        row_of[self.index] = torch.arange(self.count, device=self.index.device)
        return row_of

    @functools.cached_property
    def within(self) -> torch.Tensor:
        """(N,) each kept token's position within its image, ``i * w + j``."""
        if self.batch == 1:
            return self.index
        return self.index - self.image * (self.height * self.width)

    def gather(self, dense: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """(B, C, h, w) (or (B, h, w, C)) -> (N, C) rows of the kept tokens."""
        if channels_last:
            return dense.reshape(-1, dense.shape[-1]).index_select(0, self.index)
        # per-token reads of the NCHW map: no copy of the whole map into channels-last first
        return dense.flatten(2)[self.image, :, self.within]

    def scatter(self, rows: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """(N, C) rows -> a dense map with zeros at the switched-off tokens."""
        b, h, w, c = self.batch, self.height, self.width, rows.shape[1]
        out = rows.new_zeros(b * h * w, c)
        out.index_copy_(0, self.index, rows)
        if channels_last:
            return out.view(b, h, w, c)
        return out.as_strided((b, c, h, w), (h * w * c, 1, w * c, c))  # NCHW view of the channels-last map

    def gather_channels_last(self, dense: torch.Tensor) -> torch.Tensor:
        """(N, C) rows of a (B, C, h, w) map held in channels-last memory (what :meth:`scatter` makes, and the
        kernels it feeds return)."""
        b, c, h, w = dense.shape
        if dense.stride() != (h * w * c, 1, w * c, c):
            return self.gather(dense.permute(0, 2, 3, 1), channels_last=True)
        return dense.as_strided((b * h * w, c), (c, 1), dense.storage_offset()).index_select(0, self.index)

    def taps(self, source: Grid, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
             dilation: tuple[int, int], outside_row: int | None = None) -> torch.Tensor:
        """(N, kh * kw) rows of ``source`` each kept token of this (output) grid reads; ``source.count`` = zero row
        (a switched-off token, and a tap outside the map unless ``outside_row`` names another row for it)."""
        key = (id(source), kernel, stride, padding, dilation, outside_row)
        if key not in self._taps:
            self._taps[key] = _neighbourhood(self, source, kernel, stride, padding, dilation, outside_row)
        return self._taps[key]


def _neighbourhood(out: Grid, src: Grid, kernel, stride, padding, dilation, outside_row: int | None) -> torch.Tensor:
    # the source's row numbers on a map padded with the outside row, read at each kept output token's taps
    # through a per-shape offset table: a handful of ops per forward (the index arithmetic of every tap, redone
    # each forward, cost more than the gathers it feeds at batch 1)
    offsets, pad = _tap_offsets(out.height, out.width, src.height, src.width, kernel, stride, padding, dilation,
                                str(out.index.device))
    outside = src.count if outside_row is None else outside_row
    rows = src.row_of.view(src.batch, src.height, src.width)
    padded = torch.nn.functional.pad(rows, pad, value=outside).flatten(1)  # (B, Hp * Wp)
    return padded[out.image[:, None], offsets[out.within]]


@functools.lru_cache(maxsize=256)
def _tap_offsets(out_h: int, out_w: int, src_h: int, src_w: int, kernel, stride, padding, dilation,
                 device: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(out_h * out_w, kh * kw) flat positions on the padded source map of each output token's taps, and the
    padding (left, right, top, bottom) that map needs: every tap, outside ones included, lands on it."""
    ki = torch.arange(kernel[0]) * dilation[0]
    kj = torch.arange(kernel[1]) * dilation[1]
    oi = torch.arange(out_h) * stride[0]
    oj = torch.arange(out_w) * stride[1]
    # padded coordinates: source row r sits at r + padding; the last tap may reach past the right padding
    # (a ceil-mode pool's last window), so the map is padded as far as the taps reach
    bottom = max(0, int(oi[-1] + ki[-1]) + 1 - padding[0] - src_h)
    right = max(0, int(oj[-1] + kj[-1]) + 1 - padding[1] - src_w)
    width = padding[1] + src_w + right
    ii = oi[:, None, None, None] + ki[None, None, :, None]
    jj = oj[None, :, None, None] + kj[None, None, None, :]
    flat = (ii * width + jj).reshape(out_h * out_w, kernel[0] * kernel[1])
    return flat.to(device), (padding[1], right, padding[0], bottom)


@dataclass(eq=False)
class Rows:
    """Features of the kept tokens: ``data`` (N, C) on ``grid``; ``channels_last`` is the dense layout."""

    data: torch.Tensor
    grid: Grid
    channels_last: bool = False

    def dense(self) -> torch.Tensor:
        return self.grid.scatter(self.data, self.channels_last)

    def like(self, data: torch.Tensor) -> Rows:
        return Rows(data, self.grid, self.channels_last)


class GridSet:
    """The grids of one forward pass of a gated stage, each made once from the stage mask.

    ``pool`` is the gate's rule for the coarser grids (``mask.gate_pool``): the tokens computed there are
    the ones the dense gated graph keeps.
    """

    def __init__(self, mask: torch.Tensor, pool: str = "sample", top: Grid | None = None) -> None:
        self.mask = mask
        self.pool = pool
        self._grids: dict[tuple[int, int], Grid] = {}
        if top is not None:  # the mask's own grid, made already (``SparseRegion`` counts its tokens with it)
            self._grids[(top.height, top.width)] = top

    def at(self, height: int, width: int) -> Grid:
        key = (int(height), int(width))
        if key not in self._grids:
            self._grids[key] = Grid.from_mask(pool_mask(self.mask, key, self.pool))
        return self._grids[key]
