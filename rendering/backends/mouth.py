"""Per-frame sampling grids from the mesh fields, and the inside of the mouth painted in.

Fields keeps the identity grid and the crop of the portrait where the mesh moves anything;
a frame's grid is its head affine plus the channels' fields weighted by its parameters (one
small matmul per batch). MouthInside paints, where the inner lips have parted, a dark cavity
shaded deeper towards its middle with a band of upper teeth under the upper lip, directly on
the warped Y and UV planes (frames stay I420): the lips' positions come from the same
landmark displacements as the fields, carried through the head's affine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rendering.backends.warp import BASES, Mesh

# BT.601 limited range: a dark red cavity (deeper is darker) and off-white teeth
CAVITY_Y, CAVITY_DEEP_Y, CAVITY_UV = 50.0, 24.0, (124.0, 143.0)
TEETH_Y, TEETH_UV = 196.0, (123.0, 131.0)


class Fields:
    """Sampling grids at one resolution: identity grid plus the cropped channel fields.

    The mouth channels and the blink each keep only the rectangle where they move anything
    by more than MIN_SHIFT_PX (the mouth's reaches the jaw and cheeks, the blink's the eyes),
    so a frame costs a small matmul over a part of the image."""

    MIN_SHIFT_PX = 0.05

    def __init__(self, norm: torch.Tensor, device: torch.device, pixel: float) -> None:
        """`norm`: (channels, h, w, 2) backward offsets in grid_sample's normalised units;
        `pixel`: one pixel of this resolution in those units."""
        _, h, w, _ = norm.shape
        self.h, self.w = h, w
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
        gx, gy = np.meshgrid(xs, ys)
        self.gx = torch.from_numpy(gx)[None].to(device)  # (1, h, w)
        self.gy = torch.from_numpy(gy)[None].to(device)
        blink = BASES.index("blink")
        self.groups: list[tuple[slice, slice, slice, tuple[int, int], torch.Tensor]] = []
        for channels in (slice(0, blink), slice(blink, blink + 1)):
            part = norm[channels]
            moving = part.abs().amax(dim=(0, 3)) > self.MIN_SHIFT_PX * pixel
            rows = torch.nonzero(moving.any(dim=1)).flatten()
            cols = torch.nonzero(moving.any(dim=0)).flatten()
            if not len(rows):
                continue
            r = slice(int(rows[0]), int(rows[-1]) + 1)
            c = slice(int(cols[0]), int(cols[-1]) + 1)
            crop = part[:, r, c].contiguous()
            self.groups.append(
                (channels, r, c, tuple(crop.shape[1:3]), crop.view(len(crop), -1).to(device))
            )

    def affine(self, params: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) source positions of the head motion alone."""
        batch = params.shape[0]
        a = params[:, :6].reshape(batch, 6, 1, 1)
        # elementwise into one buffer: faster here than a (h*w, 3) @ (3, 2) matmul per frame
        grid = torch.empty(batch, self.h, self.w, 2, device=params.device)
        grid[..., 0] = a[:, 0] * self.gx + a[:, 1] * self.gy + a[:, 2]
        grid[..., 1] = a[:, 3] * self.gx + a[:, 4] * self.gy + a[:, 5]
        return grid

    def grid(self, params: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 2) source positions for grid_sample from (B, PARAMS) frame parameters."""
        grid = self.affine(params)
        channels = params[:, 6 : 6 + len(BASES)]
        for which, rows, cols, shape, fields in self.groups:
            moved = channels[:, which] @ fields
            grid[:, rows, cols] += moved.view(-1, *shape, 2)
        return grid


class MouthInside:
    """Where the inner lips part in each frame: a cavity and a hint of upper teeth."""

    def __init__(self, mesh: Mesh, full: Fields, device: torch.device) -> None:
        self.mesh, self.device = mesh, device
        lay = mesh.layout
        a = lay.mouth_width
        self.a = a
        # the most the mouth can reach: every channel at its extreme, plus head motion
        x0, y0 = lay.mouth_outer.min(axis=0) - [0.25 * a, 0.2 * a]
        x1, y1 = lay.mouth_outer.max(axis=0) + [0.25 * a, 0.55 * a]
        h, w = lay.height, lay.width
        self.r0, self.r1 = max(0, int(y0) // 2 * 2), min(h, (int(y1) // 2 + 1) * 2)
        self.c0, self.c1 = max(0, int(x0) // 2 * 2), min(w, (int(x1) // 2 + 1) * 2)
        self.gx = full.gx[:, self.r0 : self.r1, self.c0 : self.c1]
        self.gy = full.gy[:, self.r0 : self.r1, self.c0 : self.c1]
        self.columns = np.arange(self.c0, self.c1, dtype=np.float64)
        self.centre_x = float(lay.mouth_centre[0])

    def _lip_lines(self, params: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, columns) y of the inner upper and lower lip at each column of the crop."""
        channels = params[:, 6 : 6 + len(BASES)].astype(np.float64)
        upper = self.mesh.moved("inner_upper", channels)
        lower = self.mesh.moved("inner_lower", channels)
        ups, lows = [], []
        for u, lo in zip(upper, lower, strict=True):
            u, lo = u[np.argsort(u[:, 0])], lo[np.argsort(lo[:, 0])]
            yu = np.interp(self.columns, u[:, 0], u[:, 1])
            yl = np.interp(self.columns, lo[:, 0], lo[:, 1])
            # outside the corners there is no opening
            inside = (self.columns > max(u[0, 0], lo[0, 0])) & (
                self.columns < min(u[-1, 0], lo[-1, 0])
            )
            ups.append(yu)
            lows.append(np.where(inside, np.maximum(yl, yu), yu))
        to = torch.device(self.device)
        return (
            torch.tensor(np.array(ups), dtype=torch.float32, device=to),
            torch.tensor(np.array(lows), dtype=torch.float32, device=to),
        )

    def _open_rows(
        self, params: np.ndarray, upper: torch.Tensor, lower: torch.Tensor
    ) -> tuple[int, int] | None:
        """The rows of the crop (even bounds, for the half-size chroma) where some frame of the
        batch can have its lips apart, or None when no frame has: outside them the cavity's
        coverage is exactly zero, so painting only these rows changes nothing else."""
        apart = lower > upper
        if not bool(apart.any()):
            return None
        top = float(upper[apart].min()) - 0.5  # source rows where coverage can be above 0
        bottom = float(lower[apart].max()) + 0.5
        # the head's affine moves each pixel's source row by an affine amount of its position:
        # its extremes over the crop are at the crop's corners
        h = self.mesh.layout.height
        a = params[:, :6].astype(np.float64)
        shifts = []
        for gx in (float(self.gx[0, 0, 0]), float(self.gx[0, 0, -1])):
            for gy in (float(self.gy[0, 0, 0]), float(self.gy[0, -1, 0])):
                source = ((a[:, 3] * gx + a[:, 4] * gy + a[:, 5]) + 1) / 2 * h - 0.5
                shifts.append(source - ((gy + 1) / 2 * h - 0.5))
        shift = np.concatenate(shifts)
        r0 = max(self.r0, (int(np.floor(top - shift.max())) - 2) // 2 * 2)
        r1 = min(self.r1, (int(np.ceil(bottom - shift.min())) + 3) // 2 * 2)
        return (r0, r1) if r1 > r0 else None

    def paint(self, y: torch.Tensor, uv: torch.Tensor, params: np.ndarray, p: torch.Tensor) -> None:
        """Composite the mouth's inside into warped (B,1,H,W) Y and (B,2,H/2,W/2) UV."""
        if self.r1 <= self.r0 or self.c1 <= self.c0:
            return
        lay = self.mesh.layout
        batch = p.shape[0]
        upper, lower = self._lip_lines(params)
        rows = self._open_rows(params, upper, lower)
        if rows is None:
            return  # the lips touch everywhere in this batch: nothing to paint
        r0, r1 = rows
        gx, gy = self.gx[:, r0 - self.r0 : r1 - self.r0], self.gy[:, r0 - self.r0 : r1 - self.r0]
        a = p[:, :6].reshape(batch, 6, 1, 1)
        # where the head motion alone takes each crop pixel, in portrait pixels
        xs = ((a[:, 0] * gx + a[:, 1] * gy + a[:, 2]) + 1) / 2 * lay.width - 0.5
        ys = ((a[:, 3] * gx + a[:, 4] * gy + a[:, 5]) + 1) / 2 * lay.height - 0.5
        index = (xs.round() - self.c0).long().clamp_(0, upper.shape[1] - 1)
        yu = torch.gather(upper, 1, index.view(batch, -1)).view_as(xs)
        yl = torch.gather(lower, 1, index.view(batch, -1)).view_as(xs)
        gap = (yl - yu).clamp_(min=0)
        alpha = (ys - yu + 0.5).clamp_(0, 1) * (yl - ys + 0.5).clamp_(0, 1)
        alpha *= (gap / 1.5).clamp_(max=1)  # a hairline gap stays the lips' colour
        depth = (torch.minimum(ys - yu, yl - ys) / (0.12 * self.a)).clamp_(0, 1)
        bite = p[:, 6 + BASES.index("bite")].view(batch, 1, 1)
        teeth_h = (gap * (0.42 + 0.5 * bite)).clamp_(max=0.1 * self.a)
        across = 1 - ((xs - self.centre_x).abs() / (0.36 * self.a)).clamp_(0, 1) ** 4
        teeth = (yu + teeth_h - ys + 0.5).clamp_(0, 1) * across
        colour = CAVITY_Y + (CAVITY_DEEP_Y - CAVITY_Y) * depth
        colour = colour + (TEETH_Y - colour) * teeth
        region = y[:, 0, r0:r1, self.c0 : self.c1]
        region += alpha * (colour - region)
        # chroma at half size: the coverage of each 2×2 block
        alpha2 = F.avg_pool2d(alpha[:, None], 2)[:, 0]
        teeth2 = F.avg_pool2d((alpha * teeth)[:, None], 2)[:, 0] / alpha2.clamp(min=1e-3)
        rows, cols = slice(r0 // 2, r1 // 2), slice(self.c0 // 2, self.c1 // 2)
        for channel in range(2):
            target = CAVITY_UV[channel] + (TEETH_UV[channel] - CAVITY_UV[channel]) * teeth2
            plane = uv[:, channel, rows, cols]
            plane += alpha2 * (target - plane)
