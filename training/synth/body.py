"""The anny body model: loading, per-vertex part/region fields, and a pose sampler with joint limits.

Only anny's default (MakeHuman-based, Apache-2.0) model is used; its SMPL/SMPL-X options fetch
non-commercial assets and are never touched.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

import numpy as np

from engines import settings

TOPOLOGY = "notoes_collapse10pc"  # 2,454 triangles: fast to skin and to rasterise

# Bone-name prefixes of each `parts` class (index into TASKS["parts"].classes).
PART_OF_BONE_PREFIX: tuple[tuple[str, int], ...] = (
    ("head", 1),
    ("eye", 1),
    ("neck", 1),
    ("root", 2),
    ("pelvis", 2),
    ("spine", 2),
    ("clavicle", 2),
    ("shoulder", 2),
    ("upperarm", 3),
    ("lowerarm", 4),
    ("wrist", 4),
    ("finger", 4),
    ("metacarpal", 4),
    ("upperleg", 5),
    ("lowerleg", 6),
    ("foot", 6),
    ("toe", 6),
)


def configure_cache() -> None:
    """Keep anny's 790 MB build cache and warp's kernel cache in PartCam's cache folder (engines/settings.py)."""
    cache = settings.cache_dir()
    os.environ.setdefault("ANNY_CACHE_DIR", str(cache / "anny"))
    os.environ.setdefault("WARP_CACHE_PATH", str(cache / "warp"))
    os.environ.setdefault("WARP_LOG_LEVEL", "error")


def part_of_bone(name: str) -> int:
    for prefix, part in PART_OF_BONE_PREFIX:
        if name.startswith(prefix):
            return part
    raise ValueError(f"bone {name!r} has no part")


def _skew(axis: np.ndarray) -> np.ndarray:
    k = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    return np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])


@dataclass
class Joint:
    """Anatomical axes of one bone, from the rest pose (anny's local-ref frames are world-aligned at rest)."""

    index: int
    twist: np.ndarray  # along the bone
    flex: np.ndarray  # positive flex swings the bone towards the front (-y)
    abduct: np.ndarray  # positive abduction swings it away from the body's midline (or to the side)

    def __post_init__(self) -> None:
        # Rodrigues' formula per axis: R(t) = I + sin(t) K + (1 - cos(t)) K^2.
        self._k = [_skew(a) for a in (self.flex, self.abduct, self.twist)]
        self._k2 = [k @ k for k in self._k]

    def rotation(self, flex: float = 0.0, abduct: float = 0.0, twist: float = 0.0) -> np.ndarray:
        out = np.eye(3)
        for k, k2, deg in zip(self._k, self._k2, (flex, abduct, twist)):
            if deg:
                t = math.radians(deg)
                out = out @ (np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k2)
        return out


class BodyModel:
    """anny's default model on the decimated topology, plus the per-vertex fields the labeller needs."""

    def __init__(self) -> None:
        configure_cache()
        import anny
        import torch

        self.torch = torch
        self.model = anny.Anny(topology=TOPOLOGY, skinning_method="lbs")
        self.bones: list[str] = list(self.model.bone_labels)
        self.faces = self.model.get_triangular_faces().cpu().numpy().astype(np.int32)
        self.num_vertices = int(self.model.vertex_bone_weights.shape[0])
        self._collision = None
        self._limb_probe: dict[str, np.ndarray] | None = None

        with torch.no_grad():
            rest = self.model(pose_parameters=self.identity_pose(1), phenotype_kwargs={})
        self.rest_vertices = rest["rest_vertices"][0].cpu().numpy().astype(np.float32)
        self.rest_heads = rest["rest_bone_heads"][0].cpu().numpy()

        # Per-vertex part weights: skinning weights summed per part, so triangles blend smoothly.
        idx = self.model.vertex_bone_indices.cpu().numpy()
        wts = self.model.vertex_bone_weights.cpu().numpy()
        bone_part = np.array([part_of_bone(b) for b in self.bones])
        self.part_weights = np.zeros((self.num_vertices, 7), np.float32)
        np.add.at(
            self.part_weights,
            (np.repeat(np.arange(self.num_vertices), idx.shape[1]), bone_part[idx].ravel()),
            wts.ravel(),
        )
        self.bone_weight = self._bone_group_weights(idx, wts)
        self.joints = self._make_joints()
        self.fields = self._make_fields()

    # --- rest-pose geometry ------------------------------------------------------------------
    def bone(self, name: str) -> int:
        return self.bones.index(name)

    def head_of(self, name: str) -> np.ndarray:
        return self.rest_heads[self.bone(name)]

    def _bone_group_weights(self, idx: np.ndarray, wts: np.ndarray) -> dict[str, np.ndarray]:
        groups = {
            "hand": ("wrist", "finger", "metacarpal"),
            "foot": ("foot", "toe"),
            "headbone": ("head", "eye"),
            "neck": ("neck",),
        }
        out = {}
        for key, prefixes in groups.items():
            sel = np.array([b.startswith(prefixes) for b in self.bones])
            out[key] = (wts * sel[idx]).sum(1).astype(np.float32)
        return out

    def _make_joints(self) -> dict[str, Joint]:
        fwd = np.array([0.0, -1.0, 0.0])
        up = np.array([0.0, 0.0, 1.0])
        pairs = {
            "upperarm01": "lowerarm01",
            "lowerarm01": "wrist",
            "upperleg01": "lowerleg01",
            "lowerleg01": "foot",
            "clavicle": "upperarm01",
            "wrist": "finger3-1",
        }
        joints: dict[str, Joint] = {}
        for side, sign in (("L", 1.0), ("R", -1.0)):
            for bone, child in pairs.items():
                d = self.head_of(f"{child}.{side}") - self.head_of(f"{bone}.{side}")
                d /= np.linalg.norm(d)
                flex = np.cross(d, fwd)
                flex /= np.linalg.norm(flex)
                out = np.array([sign, 0.0, 0.0])
                abd = np.cross(d, out - np.dot(out, d) * d)
                abd /= np.linalg.norm(abd)
                # make positive abduction move the bone outwards, whatever the cross-product's sign
                if np.dot(np.cross(abd, d), out) < 0:
                    abd = -abd
                joints[f"{bone}.{side}"] = Joint(self.bone(f"{bone}.{side}"), d, flex, abd)
        for name in ("spine01", "spine02", "spine03", "spine04", "spine05", "neck01", "neck02", "neck03", "head"):
            flex = np.cross(up, fwd)
            side_axis = np.cross(up, np.array([1.0, 0.0, 0.0]))
            joints[name] = Joint(self.bone(name), up, flex, -side_axis)
        return joints

    def _make_fields(self) -> dict[str, np.ndarray]:
        """Scalar fields on the rest mesh that garments are cut along (interpolated per pixel)."""
        v = self.rest_vertices.astype(np.float64)
        f: dict[str, np.ndarray] = {}
        for limb, a, b in (("arm", "upperarm01", "wrist"), ("leg", "upperleg01", "foot")):
            t = np.zeros(len(v))
            for side in "LR":
                p0, p1 = self.head_of(f"{a}.{side}"), self.head_of(f"{b}.{side}")
                seg = p1 - p0
                ts = (v - p0) @ seg / (seg @ seg)
                on_side = (v[:, 0] > 0) if side == "L" else (v[:, 0] <= 0)
                t = np.where(on_side, ts, t)
            f[f"{limb}_t"] = t.astype(np.float32)
        pelvis_z = self.head_of("upperleg01.L")[2]
        neck_z = self.head_of("neck01")[2]
        f["torso_h"] = ((v[:, 2] - pelvis_z) / (neck_z - pelvis_z)).astype(np.float32)  # 0 at hips, 1 at neck
        f["arm_w"] = self.part_weights[:, 3] + self.part_weights[:, 4]
        f["leg_w"] = self.part_weights[:, 5] + self.part_weights[:, 6]
        f["head_w"] = self.bone_weight["headbone"] + self.bone_weight["neck"]
        f["hand_w"] = self.bone_weight["hand"]
        f["foot_w"] = self.bone_weight["foot"]
        return f

    # --- posing -------------------------------------------------------------------------------
    def identity_pose(self, batch: int):
        return self.torch.eye(4, dtype=self.torch.float64).repeat(batch, len(self.bones), 1, 1)

    def pose_tensor(self, rotations: list[dict[int, np.ndarray]]):
        pose = self.identity_pose(len(rotations))
        for b, rots in enumerate(rotations):
            for bone, r in rots.items():
                pose[b, bone, :3, :3] = self.torch.from_numpy(r)
        return pose

    def skin(self, rotations: list[dict[int, np.ndarray]], phenotypes: list[dict[str, float]]) -> dict[str, np.ndarray]:
        """Pose a batch: posed and rest vertices (B,V,3), bone heads (B,J,3) and skinning transforms (B,J,4,4).

        Metres; z up; the body faces -y. ``transforms[b, j]`` maps a rest-pose point rigidly attached to
        bone j to its posed position, which is how garments borrow the body's skinning.
        """
        torch = self.torch
        ph = {k: torch.tensor([p[k] for p in phenotypes], dtype=torch.float64) for k in phenotypes[0]}
        # One thread: the same summation order on every machine and in every process (so the same
        # pixels), and no oversubscription when a trainer runs generators in its loader workers.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                out = self.model(pose_parameters=self.pose_tensor(rotations), phenotype_kwargs=ph)
                transforms = out["bone_poses"] @ torch.linalg.inv(out["rest_bone_poses"])
        finally:
            torch.set_num_threads(threads)
        return {
            "vertices": out["vertices"].cpu().numpy().astype(np.float32),
            "rest_vertices": out["rest_vertices"].cpu().numpy().astype(np.float32),
            "heads": out["bone_poses"][:, :, :3, 3].cpu().numpy().astype(np.float32),
            "rest_heads": out["rest_bone_heads"].cpu().numpy().astype(np.float32),
            "transforms": transforms.cpu().numpy(),
        }

    def dense_weights(self) -> np.ndarray:
        """(V, J) skinning weights."""
        idx = self.model.vertex_bone_indices.cpu().numpy()
        wts = self.model.vertex_bone_weights.cpu().numpy()
        dense = np.zeros((self.num_vertices, len(self.bones)))
        np.add.at(dense, (np.repeat(np.arange(self.num_vertices), idx.shape[1]), idx.ravel()), wts.ravel())
        return dense

    def limbs_inside_body(self, skinned: dict, b: int, margin: float = 0.85) -> bool:
        """Fast self-intersection test for what goes wrong in random poses: an arm or hand inside the
        torso or head. Posed arm points are carried back into the rest frame of spine03 and of the head,
        where the torso and head are elliptic cylinders measured from this person's rest mesh.
        About 50 times cheaper than the exact triangle test (``self_intersects``)."""
        if self._limb_probe is None:
            self._limb_probe = self._make_limb_probe()
        probe = self._limb_probe
        rest = skinned["rest_vertices"][b]
        posed = skinned["vertices"][b][probe["arm"]]
        hom = np.concatenate([posed, np.ones((len(posed), 1), np.float32)], 1)
        for region, bone in (("torso", "spine03"), ("head", "head")):
            ring = rest[probe[region]]
            back = hom @ np.linalg.inv(skinned["transforms"][b, self.bone(bone)]).T
            z_lo, z_hi = ring[:, 2].min(), ring[:, 2].max()
            bins = np.linspace(z_lo, z_hi, 9)
            inside = np.zeros(len(back), bool)
            for lo, hi in itertools.pairwise(bins):
                sl = ring[(ring[:, 2] >= lo) & (ring[:, 2] <= hi)]
                if len(sl) < 4:
                    continue
                cx, cy = (sl[:, 0].max() + sl[:, 0].min()) / 2, (sl[:, 1].max() + sl[:, 1].min()) / 2
                ax, ay = (sl[:, 0].max() - sl[:, 0].min()) / 2, (sl[:, 1].max() - sl[:, 1].min()) / 2
                in_slab = (back[:, 2] >= lo) & (back[:, 2] <= hi)
                r = ((back[:, 0] - cx) / ax) ** 2 + ((back[:, 1] - cy) / ay) ** 2
                inside |= in_slab & (r < margin**2)
            if inside.any():
                return True
        return False

    def _make_limb_probe(self) -> dict[str, np.ndarray]:
        f = self.fields
        torso = (f["arm_w"] < 0.1) & (f["leg_w"] < 0.1) & (f["head_w"] < 0.1) & (f["torso_h"] > 0.15)
        # Points that can reach the body: forearms, hands and the outer upper arm.
        arm = ((f["arm_w"] > 0.9) & (f["arm_t"] > 0.4)) | (f["hand_w"] > 0.5)
        return {"torso": torso, "head": f["head_w"] > 0.9, "arm": arm}

    def self_intersects(self, vertices: np.ndarray) -> bool:
        if self._collision is None:
            from anny.utils.collision import SelfInterpenetrationModule

            self._collision = SelfInterpenetrationModule(self.model)
        hit = self._collision.detect_self_intersections(self.torch.from_numpy(vertices))
        return bool((hit >= 0).any())
