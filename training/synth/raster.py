"""A vectorised numpy z-buffer rasteriser: per pixel, the nearest triangle and its barycentric weights.

Portable (no GPU, no compiler) and exact: every pixel centre is tested against every candidate
triangle's edge functions, and depth is resolved per pixel rather than per triangle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fragments:
    """The visible surface: ``face`` is -1 where nothing was drawn."""

    face: np.ndarray  # (H, W) int32
    bary: np.ndarray  # (N, 3) float32 perspective-correct weights of the covered pixels, in flat order
    pixels: np.ndarray  # (N,) flat indices of the covered pixels

    def interpolate(self, faces: np.ndarray, attributes: np.ndarray) -> np.ndarray:
        """Per-covered-pixel attribute (N, K) from per-vertex attributes (V, K)."""
        tri = faces[self.face.ravel()[self.pixels]]
        return np.einsum("nk,nkc->nc", self.bary, attributes[tri])


def rasterize(
    screen: np.ndarray,
    depth: np.ndarray,
    faces: np.ndarray,
    size: tuple[int, int],
    two_sided: np.ndarray | None = None,
    near: float = 0.05,
) -> Fragments:
    """Rasterise triangles given vertex pixel coordinates ``screen`` (V,2), camera depth (V,) and faces (F,3).

    Triangles facing away are culled unless ``two_sided[f]`` (open sheets such as skirts or hair).
    """
    h, w = size
    tri_xy = screen[faces].astype(np.float64)  # (F,3,2)
    tri_z = depth[faces].astype(np.float64)
    x0, y0 = tri_xy[:, 0, 0], tri_xy[:, 0, 1]
    x1, y1 = tri_xy[:, 1, 0], tri_xy[:, 1, 1]
    x2, y2 = tri_xy[:, 2, 0], tri_xy[:, 2, 1]
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    # In image coordinates (y down) counter-clockwise-in-world front faces have negative area.
    front = area < 0
    keep = (np.abs(area) > 1e-9) & (tri_z.min(1) > near)
    keep &= front if two_sided is None else (front | two_sided)
    xmin = np.floor(tri_xy[:, :, 0].min(1) - 0.5).astype(np.int64) + 1
    xmax = np.floor(tri_xy[:, :, 0].max(1) - 0.5).astype(np.int64)
    ymin = np.floor(tri_xy[:, :, 1].min(1) - 0.5).astype(np.int64) + 1
    ymax = np.floor(tri_xy[:, :, 1].max(1) - 0.5).astype(np.int64)
    xmin, ymin = np.maximum(xmin, 0), np.maximum(ymin, 0)
    xmax, ymax = np.minimum(xmax, w - 1), np.minimum(ymax, h - 1)
    keep &= (xmax >= xmin) & (ymax >= ymin)
    fid = np.nonzero(keep)[0]
    bh = (ymax - ymin + 1)[fid]
    empty = Fragments(np.full((h, w), -1, np.int32), np.zeros((0, 3), np.float32), np.zeros(0, np.int64))
    if len(fid) == 0:
        return empty

    # Edge-function coefficients per kept face: lambda_i(x, y) = a_i x + b_i y + c_i.
    inv = 1.0 / area[fid]
    X0, Y0, X1, Y1, X2, Y2 = x0[fid], y0[fid], x1[fid], y1[fid], x2[fid], y2[fid]
    a = np.stack([(Y1 - Y2), (Y2 - Y0), (Y0 - Y1)], 1) * inv[:, None]
    b = np.stack([(X2 - X1), (X0 - X2), (X1 - X0)], 1) * inv[:, None]
    c = np.stack([X1 * Y2 - X2 * Y1, X2 * Y0 - X0 * Y2, X0 * Y1 - X1 * Y0], 1) * inv[:, None]
    # 1/z is affine in screen space, so each face's inverse depth is a plane too.
    rz = 1.0 / tri_z[fid]
    za, zb, zc = (a * rz).sum(1), (b * rz).sum(1), (c * rz).sum(1)

    # Scanline spans: on each pixel row a triangle covers one interval of x, found from its three
    # edge functions, so only covered pixels are ever enumerated.
    bx0 = xmin[fid]
    rows = bh
    row_owner = np.repeat(np.arange(len(fid)), rows)
    row_y = ymin[fid][row_owner] + (np.arange(int(rows.sum())) - np.repeat(np.cumsum(rows) - rows, rows))
    yc = row_y + 0.5
    ra = a[row_owner]
    rhs = -(b[row_owner] * yc[:, None] + c[row_owner])  # need a_i * x >= rhs_i
    eps = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = rhs / ra
    lower = np.where(ra > eps, bound, -np.inf).max(1)
    upper = np.where(ra < -eps, bound, np.inf).min(1)
    flat_ok = np.where(np.abs(ra) <= eps, rhs <= 1e-7, True).all(1)
    lo = np.maximum(np.ceil(lower - 0.5 - 1e-7), bx0[row_owner]).astype(np.int64)
    hi = np.minimum(np.floor(upper - 0.5 + 1e-7), xmax[fid][row_owner]).astype(np.int64)
    span = np.where(flat_ok, np.maximum(hi - lo + 1, 0), 0)
    total = int(span.sum())
    if total == 0:
        return empty
    seg = np.nonzero(span)[0]
    span = span[seg]
    owner = np.repeat(row_owner[seg], span)
    px = np.repeat(lo[seg], span) + (np.arange(total) - np.repeat(np.cumsum(span) - span, span))
    py = np.repeat(row_y[seg], span)
    cx, cy = px + 0.5, py + 0.5
    inv_depth = za[owner] * cx + zb[owner] * cy + zc[owner]

    pix = py * w + px
    zbuf = np.full(h * w, -np.inf)
    np.maximum.at(zbuf, pix, inv_depth)
    win_idx = np.nonzero(inv_depth >= zbuf[pix])[0]
    face_flat = np.full(h * w, -1, np.int32)
    slot = np.full(h * w, -1, np.int64)
    # Exact depth ties are broken by the later candidate, the same on every run.
    face_flat[pix[win_idx]] = fid[owner[win_idx]]
    slot[pix[win_idx]] = win_idx
    pixels = np.nonzero(slot >= 0)[0]
    chosen = slot[pixels]
    o = owner[chosen]
    lam = a[o] * cx[chosen, None] + b[o] * cy[chosen, None] + c[o]
    lam = np.clip(lam, 0.0, None)
    persp = lam * rz[o]
    bary = (persp / persp.sum(1, keepdims=True)).astype(np.float32)
    return Fragments(face_flat.reshape(h, w), bary, pixels)
