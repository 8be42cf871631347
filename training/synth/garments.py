"""Garment geometry that changes the silhouette (skirts, coat tails, long hair, bags and straps).

Each piece is built around one person's rest-pose body and skinned with weights borrowed from the
nearest body vertices, so it follows the pose like the body does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class Piece:
    """A garment mesh in rest pose; ``material`` names an entry of the person's outfit."""

    vertices: np.ndarray  # (V,3) rest pose
    faces: np.ndarray  # (F,3)
    material: str
    parts: np.ndarray  # (V,7) part weights of the `parts` task
    allowed: str = "any"  # which body vertices it may borrow skinning from
    texcoords: np.ndarray | None = field(default=None)


def grid_faces(rows: int, cols: int, wrap: bool) -> np.ndarray:
    """Two triangles per quad of a rows x cols vertex grid (columns wrap around for tubes)."""
    faces = []
    ncol = cols if wrap else cols - 1
    for r in range(rows - 1):
        for c in range(ncol):
            a, b = r * cols + c, r * cols + (c + 1) % cols
            d, e = a + cols, b + cols
            faces += [(a, d, b), (b, d, e)]
    return np.asarray(faces, np.int32)


def box(center: np.ndarray, half: np.ndarray, subdiv: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A closed box (subdivided so that borrowed skinning can bend it a little)."""
    verts, faces = [], []
    lin = np.linspace(-1, 1, subdiv + 1)
    for axis in range(3):
        for sign in (-1, 1):
            u_ax, v_ax = [a for a in range(3) if a != axis]
            base = len(verts)
            for i in lin:
                for j in lin:
                    p = np.zeros(3)
                    p[axis], p[u_ax], p[v_ax] = sign, i, j
                    verts.append(center + p * half)
            faces.append(grid_faces(subdiv + 1, subdiv + 1, False) + base)
    return np.asarray(verts, np.float32), np.concatenate(faces)


def strip(points: np.ndarray, width: float, across: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A ribbon along a polyline (a bag strap), ``across`` giving its sideways direction per point."""
    left = points - across * width / 2
    right = points + across * width / 2
    verts = np.stack([left, right], 1).reshape(-1, 3)
    return verts.astype(np.float32), grid_faces(len(points), 2, False)


def _parts_by_height(verts: np.ndarray, hip_z: float, knee_z: float) -> np.ndarray:
    """Part weights for a skirt-like piece: torso above the hips, upper legs to the knee, lower legs below."""
    p = np.zeros((len(verts), 7), np.float32)
    z = verts[:, 2]
    p[:, 2] = np.clip((z - hip_z) / 0.03 + 0.5, 0, 1)
    p[:, 6] = np.clip((knee_z - z) / 0.03 + 0.5, 0, 1)
    p[:, 5] = np.clip(1 - p[:, 2] - p[:, 6], 0, 1)
    return p


class GarmentBuilder:
    """Builds silhouette garments for one person's rest body (all lengths in metres)."""

    def __init__(self, rest: np.ndarray, heads: dict[str, np.ndarray], fields: dict[str, np.ndarray]) -> None:
        self.rest = rest
        self.heads = heads
        self.fields = fields
        self.torso = (fields["arm_w"] < 0.5) & (fields["leg_w"] < 0.5) & (fields["head_w"] < 0.5)

    def _extent(self, z: float, mask: np.ndarray, tol: float = 0.03) -> tuple[float, float, float, float]:
        sel = self.rest[mask & (np.abs(self.rest[:, 2] - z) < tol)]
        if len(sel) == 0:
            sel = self.rest[mask]
        return float(sel[:, 0].min()), float(sel[:, 0].max()), float(sel[:, 1].min()), float(sel[:, 1].max())

    def hair_cap(self, faces: np.ndarray, region: np.ndarray, thickness: float, material: str) -> Piece:
        """Volume for hair: the scalp faces of ``region`` (a vertex mask) lifted along their normals."""
        keep = region[faces].all(1)
        sub = faces[keep]
        used = np.unique(sub)
        remap = np.full(len(self.rest), -1, np.int64)
        remap[used] = np.arange(len(used))
        fn = np.cross(self.rest[faces[:, 1]] - self.rest[faces[:, 0]], self.rest[faces[:, 2]] - self.rest[faces[:, 0]])
        vn = np.zeros_like(self.rest)
        for k in range(3):
            np.add.at(vn, faces[:, k], fn)
        vn /= np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12
        verts = (self.rest[used] + vn[used] * thickness).astype(np.float32)
        p = np.zeros((len(verts), 7), np.float32)
        p[:, 1] = 1.0
        return Piece(verts, remap[sub].astype(np.int32), material, p, "head")

    def skirt(self, length: float, flare: float, material: str, waist: float) -> Piece:
        """A tube from the waist (torso_h ``waist``) flaring down to ``length`` x hip-to-knee."""
        hip_z = float(self.heads["upperleg01.L"][2])
        knee_z = float(self.heads["lowerleg01.L"][2])
        top_z = hip_z + waist * (self.heads["neck01"][2] - hip_z)
        bottom_z = hip_z - length * (hip_z - knee_z)
        body_or_legs = self.torso | (self.fields["leg_w"] > 0.5)
        rows, cols = 6, 24
        ang = np.linspace(0, 2 * np.pi, cols, endpoint=False)
        verts = []
        for r, z in enumerate(np.linspace(top_z, bottom_z, rows)):
            x0, x1, y0, y1 = self._extent(float(z), body_or_legs if z < hip_z else self.torso)
            grow = 1.0 + (flare - 1.0) * (r / (rows - 1)) ** 1.3
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            rx, ry = (x1 - x0) / 2 * 1.06 * grow + 0.01, (y1 - y0) / 2 * 1.1 * grow + 0.01
            for t in ang:
                verts.append((cx + rx * np.sin(t), cy + ry * np.cos(t), z))
        v = np.asarray(verts, np.float32)
        return Piece(v, grid_faces(rows, cols, True), material, _parts_by_height(v, hip_z, knee_z), "torso_legs")

    def long_hair(self, length: float, material: str) -> Piece:
        """A shell behind and beside the head that drapes onto the shoulders and back."""
        head_mask = self.fields["head_w"] > 0.5
        hv = self.rest[head_mask]
        top_z = float(hv[:, 2].max()) + 0.01
        centre = np.array([hv[:, 0].mean(), hv[:, 1].mean()])
        chin_z = float(self.heads["neck01"][2])
        bottom_z = chin_z - length
        rows, cols = 9, 19
        ang = np.linspace(-0.62 * np.pi, 0.62 * np.pi, cols)  # 0 = straight back (+y)
        head_r = max(float(hv[:, 0].max() - hv[:, 0].min()), float(hv[:, 1].max() - hv[:, 1].min())) / 2
        verts = []
        upper = self.rest[self.torso | head_mask]
        dirs = np.stack([np.sin(ang), np.cos(ang)], 1)  # (cols, 2)
        perps = np.stack([-dirs[:, 1], dirs[:, 0]], 1)
        for z in np.linspace(top_z - 0.04, bottom_z, rows):
            # Per direction, the furthest body point in a narrow wedge: hair lies on head, shoulders, back.
            rel = upper[np.abs(upper[:, 2] - z) < 0.025][:, :2] - centre
            along = rel @ dirs.T  # (n, cols)
            near = np.abs(rel @ perps.T) < 0.03
            reach = np.where(near, along, -np.inf).max(0) if len(rel) else np.full(cols, -np.inf)
            r = np.where(np.isfinite(reach), np.maximum(head_r * 0.54, reach), head_r * 0.9)
            r = np.minimum(r + 0.015, head_r * 1.5)
            verts += [(centre[0] + d[0] * ri, centre[1] + d[1] * ri, z) for d, ri in zip(dirs, r)]
        v = np.asarray(verts, np.float32)
        p = np.zeros((len(v), 7), np.float32)
        p[:, 1] = 1.0
        return Piece(v, grid_faces(rows, cols, False), material, p, "head_torso")

    def backpack(self, material: str, rng: np.random.Generator) -> list[Piece]:
        neck_z = float(self.heads["neck01"][2])
        hip_z = float(self.heads["upperleg01.L"][2])
        zc = hip_z + (neck_z - hip_z) * rng.uniform(0.5, 0.62)
        x0, x1, _y0, y1 = self._extent(zc, self.torso, 0.06)
        half = np.array([rng.uniform(0.12, 0.17), rng.uniform(0.05, 0.09), rng.uniform(0.15, 0.22)])
        centre = np.array([(x0 + x1) / 2, y1 + half[1] + 0.01, zc])
        v, f = box(centre, half)
        pieces = [Piece(v, f, material, np.zeros((len(v), 7), np.float32), "torso")]
        for sx in (-1, 1):
            pieces.append(self._strap_over_shoulder(sx * 0.09, centre[2] + half[2], zc - 0.12, material))
        return pieces

    def _front_y(self, x: float, z: float) -> float:
        sel = self.rest[self.torso & (np.abs(self.rest[:, 0] - x) < 0.04) & (np.abs(self.rest[:, 2] - z) < 0.04)]
        return float(sel[:, 1].min()) if len(sel) else float(self.rest[self.torso][:, 1].min())

    def _back_y(self, x: float, z: float) -> float:
        sel = self.rest[self.torso & (np.abs(self.rest[:, 0] - x) < 0.04) & (np.abs(self.rest[:, 2] - z) < 0.04)]
        return float(sel[:, 1].max()) if len(sel) else float(self.rest[self.torso][:, 1].max())

    def _strap_over_shoulder(self, x: float, z_back: float, z_front: float, material: str) -> Piece:
        top = float(self.rest[self.torso & (np.abs(self.rest[:, 0] - x) < 0.03)][:, 2].max())
        pts = [
            (x, self._back_y(x, z_back) + 0.015, z_back),
            (x, self._back_y(x, top - 0.05) + 0.015, top - 0.03),
            (x, 0.5 * (self._back_y(x, top) + self._front_y(x, top)), top + 0.012),
            (x * 1.1, self._front_y(x, top - 0.06) - 0.015, top - 0.05),
            (x * 1.4, self._front_y(x * 1.4, z_front) - 0.015, z_front),
        ]
        pts = np.asarray(pts)
        v, f = strip(pts, 0.045, np.tile([1.0, 0.0, 0.0], (len(pts), 1)))
        return Piece(v, f, material, np.zeros((len(v), 7), np.float32), "torso")

    def shoulder_bag(self, material: str, rng: np.random.Generator) -> list[Piece]:
        side = float(rng.choice([-1.0, 1.0]))
        hip_z = float(self.heads["upperleg01.L"][2])
        x0, x1, y0, y1 = self._extent(hip_z, self.torso | (self.fields["leg_w"] > 0.5), 0.04)
        half = np.array([rng.uniform(0.03, 0.05), rng.uniform(0.1, 0.15), rng.uniform(0.07, 0.12)])
        xc = (x1 if side > 0 else x0) + side * (half[0] + 0.015)
        centre = np.array([xc, (y0 + y1) / 2, hip_z + rng.uniform(-0.02, 0.1)])
        v, f = box(centre, half)
        pieces = [Piece(v, f, material, np.zeros((len(v), 7), np.float32), "torso_legs")]
        # Strap: from the bag across the front of the chest over the opposite shoulder.
        shoulder_x = -side * 0.1
        top = float(self.rest[self.torso & (np.abs(self.rest[:, 0] - shoulder_x) < 0.03)][:, 2].max())
        pts = []
        for t in np.linspace(0, 1, 8):
            x = xc + (shoulder_x - xc) * t
            z = centre[2] + half[2] + (top - 0.02 - centre[2] - half[2]) * t
            pts.append((x, self._front_y(x, z) - 0.015, z))
        pts.append((shoulder_x, 0.5 * (self._front_y(shoulder_x, top) + self._back_y(shoulder_x, top)), top + 0.012))
        pts.append((shoulder_x, self._back_y(shoulder_x, top - 0.06) + 0.015, top - 0.06))
        pts = np.asarray(pts)
        tangent = np.gradient(pts, axis=0)
        across = np.cross(tangent, [0.0, 1.0, 0.0])
        across /= np.linalg.norm(across, axis=1, keepdims=True) + 1e-9
        sv, sf = strip(pts, 0.035, across)
        pieces.append(Piece(sv, sf, material, np.zeros((len(sv), 7), np.float32), "torso"))
        return pieces

    def handbag(self, material: str, rng: np.random.Generator) -> list[Piece]:
        side = str(rng.choice(["L", "R"]))
        wrist = self.heads[f"wrist.{side}"]
        half = np.array([rng.uniform(0.04, 0.06), rng.uniform(0.1, 0.15), rng.uniform(0.08, 0.12)])
        centre = wrist + np.array([0.0, 0.0, -0.07 - half[2]])
        v, f = box(centre, half)
        return [Piece(v, f, material, np.zeros((len(v), 7), np.float32), f"hand_{side}")]


def borrow_skinning(
    piece: Piece, rest: np.ndarray, weights: np.ndarray, allowed: np.ndarray, trees: dict | None = None, k: int = 6
) -> np.ndarray:
    """(Vg, J) skinning weights for a piece: inverse-distance blend of the k nearest allowed body vertices.

    ``trees`` caches the search structure per ``piece.allowed`` for pieces on the same body."""
    idx_allowed = np.nonzero(allowed)[0]
    if trees is not None and piece.allowed in trees:
        tree = trees[piece.allowed]
    else:
        tree = cKDTree(rest[idx_allowed])
        if trees is not None:
            trees[piece.allowed] = tree
    dist, nn = tree.query(piece.vertices, k=min(k, len(idx_allowed)))
    inv = 1.0 / (dist + 0.01)
    inv /= inv.sum(1, keepdims=True)
    return np.einsum("vk,vkj->vj", inv, weights[idx_allowed[nn]])
