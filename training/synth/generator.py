"""SyntheticPeople: random scenes of 1-3 anny people in clothes, with exact `parts` and `clothes` labels."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .appearance import (
    DENIM,
    GREY_HAIR,
    HAIR_COLOURS,
    SHOE_COLOURS,
    Backgrounds,
    cloth_colour,
    degrade,
    fabric,
    muted_colour,
    pattern_params,
    pick,
    skin_colour,
)
from .body import BodyModel
from .garments import GarmentBuilder, Piece, borrow_skinning, box
from .poses import PoseSampler
from .raster import rasterize

# Bump whenever the pixels for a given (seed, index, size) change, so manifests tell datasets apart.
GENERATOR_VERSION = "synth-1.2"
SKIN, UPPER, LOWER, BAG, SHOES = 1, 2, 3, 4, 5  # TASKS["clothes"].classes indices
FIELD_NAMES = ("arm_t", "leg_t", "torso_h", "arm_w", "leg_w", "head_w", "hand_w", "foot_w")

_BODY: BodyModel | None = None


def shared_body() -> BodyModel:
    """One body model per process (building it takes seconds; the on-disk cache makes it fast after the first)."""
    global _BODY
    if _BODY is None:
        _BODY = BodyModel()
    return _BODY


@dataclass
class Material:
    colour: np.ndarray
    pattern: dict
    label: int
    shine: float = 0.0


@dataclass
class Person:
    phenotype: dict[str, float]
    pose_kind: str
    rotations: dict
    outfit: dict
    materials: dict[str, Material]
    yaw: float
    offset: np.ndarray


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals."""
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    corners = faces.ravel()
    vn = np.stack([np.bincount(corners, np.repeat(fn[:, c], 3), minlength=len(verts)) for c in range(3)], 1)
    return vn / (np.linalg.norm(vn, axis=1, keepdims=True) + 1e-12)


def antialias_edges(image: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Soften the one-pixel staircase where surfaces meet (the labels stay exact)."""
    h, w = face.shape
    edge = np.zeros(face.shape, bool)
    dx = face[:, 1:] != face[:, :-1]
    dy = face[1:] != face[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    ys, xs = np.nonzero(edge)
    # Edges between triangles of one mesh get the same treatment; that is harmless and cheaper.
    neighbours = (
        image[ys, np.maximum(xs - 1, 0)]
        + image[ys, np.minimum(xs + 1, w - 1)]
        + image[np.maximum(ys - 1, 0), xs]
        + image[np.minimum(ys + 1, h - 1), xs]
    )
    out = image.copy()
    out[ys, xs] = 0.5 * image[ys, xs] + 0.125 * neighbours
    return out


def letterbox(
    image: np.ndarray, parts: np.ndarray, clothes: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A wide or tall frame padded to a square the way apps do it, with blurred content, never black bars."""
    size = image.shape[0]
    aspect = rng.choice([4 / 3, 16 / 9])
    inner = round(float(size / aspect))
    pad0 = int(rng.integers(0, size - inner + 1))
    small = (size, inner) if rng.random() < 0.5 else (inner, size)  # (width, height)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    fg = pil.resize(small, Image.BILINEAR)
    bg = pil.resize((16, 16), Image.BILINEAR).resize((size, size), Image.BILINEAR)
    bg = Image.blend(
        bg, Image.new("RGB", (size, size), tuple(int(v) for v in rng.uniform(60, 230, 3))), float(rng.uniform(0, 0.6))
    )
    offset = (0, pad0) if small[1] == inner else (pad0, 0)
    bg.paste(fg, offset)
    out_labels = []
    for lab in (parts, clothes):
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(Image.fromarray(lab).resize(small, Image.NEAREST), offset)
        out_labels.append(np.asarray(canvas))
    return np.asarray(bg, np.float32), out_labels[0], out_labels[1]


def rot_z(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


class SyntheticPeople:
    """Deterministic synthetic people: ``sample(index)`` depends only on (seed, index, size)."""

    def __init__(self, size: int = 320, seed: int = 0) -> None:
        self.size = int(size)
        self.seed = int(seed)
        self.body = shared_body()
        self.poses = PoseSampler(self.body)
        self.backgrounds = Backgrounds()
        self.weights = self.body.dense_weights()
        b = self.body
        self.body_fields = np.stack([b.fields[k] for k in FIELD_NAMES], 1).astype(np.float32)
        self.eye_rest = np.stack([b.head_of("eye.L"), b.head_of("eye.R")])
        head = b.rest_vertices[b.fields["head_w"] > 0.5]
        self.head_top = float(head[:, 2].max())
        self.head_centre = head.mean(0)
        self.masks = {
            "torso": (b.fields["arm_w"] < 0.5) & (b.fields["leg_w"] < 0.5) & (b.fields["head_w"] < 0.5),
            "legs": b.fields["leg_w"] > 0.5,
            "head": b.fields["head_w"] > 0.5,
            "hand_L": (b.fields["hand_w"] > 0.5) & (b.rest_vertices[:, 0] > 0),
            "hand_R": (b.fields["hand_w"] > 0.5) & (b.rest_vertices[:, 0] < 0),
        }

    # ------------------------------------------------------------------ public API
    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, parts uint8 HxW, clothes uint8 HxW); rgb is the decoded JPEG, as written to disk."""
        jpeg, parts, clothes = self.render(index)
        rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        return rgb, parts, clothes

    def render(self, index: int) -> tuple[bytes, np.ndarray, np.ndarray]:
        """JPEG bytes and the two label maps for one sample."""
        rng = np.random.default_rng([self.seed, int(index), 0x5EED])
        n_people = int(rng.choice([1, 2, 3, 4, 5], p=[0.47, 0.27, 0.14, 0.07, 0.05]))
        people = [self._person(rng, main=i == 0) for i in range(n_people)]
        skinned = self._skin(people, rng)
        return self._draw(people, skinned, rng)

    # ------------------------------------------------------------------ people
    def _phenotype(self, rng: np.random.Generator) -> dict[str, float]:
        r = rng.random()
        age = rng.uniform(0.22, 0.48) if r < 0.15 else rng.uniform(0.86, 1.0) if r > 0.85 else rng.uniform(0.5, 0.86)
        return {
            "gender": float(rng.beta(0.6, 0.6)),
            "age": float(age),
            "muscle": float(rng.beta(2, 2)),
            "weight": float(rng.beta(1.6, 1.6)),
            "height": float(rng.uniform(0.1, 0.9)),
            "proportions": float(rng.uniform(0.2, 0.8)),
        }

    def _outfit(self, rng: np.random.Generator, phenotype: dict) -> tuple[dict, dict[str, Material]]:
        o: dict = {}
        mats: dict[str, Material] = {}
        skin = skin_colour(rng)
        mats["skin"] = Material(skin, {"kind": "solid"}, SKIN)
        old = phenotype["age"] > 0.85 and rng.random() < 0.75
        mats["hair"] = Material(
            pick(rng, GREY_HAIR if old else HAIR_COLOURS) * rng.uniform(0.8, 1.2), {"kind": "solid"}, SKIN, shine=0.25
        )
        o["hair"] = str(rng.choice(["none", "short", "long"], p=[0.05, 0.55, 0.4]))
        o["hair_len"] = float(rng.uniform(0.05, 0.3))
        o["hair_line"] = float(rng.uniform(0.03, 0.07))
        o["hair_volume"] = float(rng.uniform(0.03, 0.06) if rng.random() < 0.12 else rng.uniform(0.004, 0.025))
        o["lips"] = np.array([rng.uniform(0.6, 0.85), rng.uniform(0.4, 0.6), rng.uniform(0.42, 0.62)], np.float32)
        top = str(rng.choice(["sleeveless", "short", "long"], p=[0.2, 0.4, 0.4]))
        o["sleeve"] = {
            "sleeveless": rng.uniform(-0.1, 0.06),
            "short": rng.uniform(0.22, 0.45),
            "long": rng.uniform(0.85, 1.05),
        }[top]
        o["neckline"] = float(rng.uniform(0.84, 0.97))
        o["top_hem"] = float(rng.uniform(0.38, 0.5) if rng.random() < 0.05 else rng.uniform(-0.2, 0.25))
        o["bottom_waist"] = float(rng.uniform(0.18, 0.33))
        bottom = str(
            rng.choice(
                ["trousers", "jeans", "shorts", "capri", "skirt", "dress"], p=[0.25, 0.22, 0.14, 0.06, 0.17, 0.16]
            )
        )
        o["bottom"] = bottom
        o["leg_len"] = {
            "trousers": rng.uniform(0.9, 1.02),
            "jeans": rng.uniform(0.9, 1.02),
            "shorts": rng.uniform(0.12, 0.42),
            "capri": rng.uniform(0.58, 0.78),
        }.get(bottom, -1.0)
        o["skirt_len"] = float(rng.uniform(0.35, 1.7))
        o["skirt_flare"] = float(rng.uniform(1.0, 1.6))
        o["coat"] = bool(rng.random() < 0.1)
        mats["top"] = Material(cloth_colour(rng), pattern_params(rng), UPPER, shine=float(rng.uniform(0, 0.2)))
        if bottom == "jeans":
            mats["bottom"] = Material(
                pick(rng, DENIM) * rng.uniform(0.8, 1.2), {**pattern_params(rng), "kind": "denim"}, LOWER
            )
        elif bottom == "dress":
            mats["bottom"] = Material(mats["top"].colour, mats["top"].pattern, LOWER, mats["top"].shine)
            o["top_hem"] = -0.3
        else:
            p = pattern_params(rng) if rng.random() < 0.5 else {"kind": "solid"}
            mats["bottom"] = Material(cloth_colour(rng), p, LOWER)
        if o["coat"]:
            o["sleeve"] = float(rng.uniform(0.9, 1.02))
            o["neckline"] = float(rng.uniform(0.9, 1.0))
            o["top_hem"] = -0.3
            o["coat_len"] = float(rng.uniform(0.5, 1.3))
            mats["top"] = Material(
                cloth_colour(rng), pattern_params(rng) if rng.random() < 0.2 else {"kind": "solid"}, UPPER
            )
        if bottom in ("trousers", "jeans") and not o["coat"] and rng.random() < 0.15:
            # A dark suit: jacket and trousers of one cloth, long sleeves, a light shirt at the neck.
            suit = pick(rng, ((22, 22, 26), (30, 36, 62), (58, 60, 66), (80, 70, 60))) * rng.uniform(0.8, 1.2)
            o["sleeve"] = float(rng.uniform(0.92, 1.02))
            o["top_hem"] = float(rng.uniform(-0.25, -0.1))
            o["neckline"] = float(rng.uniform(0.8, 0.88))
            mats["top"] = Material(suit, {"kind": "solid"}, UPPER, 0.1)
            mats["bottom"] = Material(suit, {"kind": "solid"}, LOWER, 0.1)
            mats["shirt"] = Material(
                pick(rng, ((235, 235, 232), (200, 215, 235), (240, 230, 220))), {"kind": "solid"}, UPPER
            )
            o["shirt_neck"] = float(rng.uniform(0.93, 0.98))
        o["tights"] = bool(bottom in ("skirt", "dress") and rng.random() < 0.3)
        mats["tights"] = Material(pick(rng, ((20, 20, 22), (60, 50, 45), (200, 170, 150))), {"kind": "solid"}, LOWER)
        o["barefoot"] = bool(rng.random() < 0.06)
        mats["shoes"] = Material(pick(rng, SHOE_COLOURS) * rng.uniform(0.8, 1.2), {"kind": "solid"}, SHOES, 0.3)
        o["bag"] = str(rng.choice(["none", "backpack", "shoulder", "handbag"], p=[0.52, 0.16, 0.2, 0.12]))
        mats["bag"] = Material(cloth_colour(rng) * rng.uniform(0.7, 1.1), {"kind": "solid"}, BAG, 0.3)
        return o, mats

    def _person(self, rng: np.random.Generator, main: bool) -> Person:
        phenotype = self._phenotype(rng)
        kind, rotations = self.poses.sample(rng)
        if not main and kind == "selfie":
            kind, rotations = self.poses.sample(rng, "standing")
        outfit, mats = self._outfit(rng, phenotype)
        r = rng.random()
        if r < 0.6:  # mostly facing the camera, as in selfies and demos
            yaw = rng.normal(0, 20)
        elif r < 0.87:
            yaw = rng.choice([-1, 1]) * rng.uniform(30, 110)
        else:
            yaw = 180 + rng.normal(0, 30)
        if kind == "selfie":
            yaw = rng.normal(0, 10)
        return Person(phenotype, kind, rotations, outfit, mats, float(yaw), np.zeros(3))

    def _skin(self, people: list[Person], rng: np.random.Generator) -> dict:
        """Skin everybody; a pose with an arm inside the torso or head is replaced by another of the same
        kind or else a standing one (both skinned in one more batch, only when needed)."""
        body = self.body
        out = body.skin([p.rotations for p in people], [p.phenotype for p in people])
        bad = [i for i in range(len(people)) if body.limbs_inside_body(out, i)]
        if not bad:
            return out
        candidates = []
        for i in bad:
            candidates += [self.poses.sample(rng, people[i].pose_kind)[1], self.poses.sample(rng, "standing")[1]]
        retry = body.skin(candidates, [people[i].phenotype for i in bad for _ in range(2)])
        for j, i in enumerate(bad):
            row = 2 * j if not body.limbs_inside_body(retry, 2 * j) else 2 * j + 1
            if row == 2 * j + 1:
                people[i].pose_kind = "standing"
            people[i].rotations = candidates[row]
            for key in out:
                out[key][i] = retry[key][row]
        return out

    def _pieces(self, person: Person, b: int, skinned: dict, rng: np.random.Generator) -> list[Piece]:
        o = person.outfit
        heads = {name: skinned["rest_heads"][b, i] for i, name in enumerate(self.body.bones)}
        builder = GarmentBuilder(skinned["rest_vertices"][b], heads, self.body.fields)
        pieces: list[Piece] = []
        # Deep hip flexion stretches long hems into sheets when the skinning is borrowed from the thighs,
        # so seated and crouching people get short, straight ones.
        folded = person.pose_kind in ("sitting", "crouching")
        if o["bottom"] in ("skirt", "dress"):
            length, flare = (min(o["skirt_len"], 0.6), 1.0) if folded else (o["skirt_len"], o["skirt_flare"])
            pieces.append(builder.skirt(length, flare, "bottom", o["bottom_waist"]))
        if o["coat"]:
            pieces.append(builder.skirt(min(o["coat_len"], 0.5) if folded else o["coat_len"], 1.15, "top", 0.2))
        if o["hair"] != "none":
            region = self._hair_region(o, self.body.rest_vertices) & self.masks["head"]
            pieces.append(builder.hair_cap(self.body.faces, region, o["hair_volume"], "hair"))
        if o["hair"] == "long":
            pieces.append(builder.long_hair(o["hair_len"], "hair"))
        if o["bag"] == "backpack":
            pieces += builder.backpack("bag", rng)
        elif o["bag"] == "shoulder":
            pieces += builder.shoulder_bag("bag", rng)
        elif o["bag"] == "handbag":
            pieces += builder.handbag("bag", rng)
        return pieces

    # ------------------------------------------------------------------ scene
    def _draw(
        self, people: list[Person], skinned: dict, rng: np.random.Generator
    ) -> tuple[bytes, np.ndarray, np.ndarray]:
        size = self.size
        body = self.body
        nv = body.num_vertices
        meshes = []  # (person index, piece or None, world vertices, faces, two_sided)
        for b, person in enumerate(people):
            R = rot_z(person.yaw)
            verts = skinned["vertices"][b] @ R.T
            meshes.append((b, None, verts, body.faces, False))
            trees: dict = {}  # nearest-vertex search structures, shared by this person's pieces
            for piece in self._pieces(person, b, skinned, rng):
                allowed = {
                    "any": np.ones(nv, bool),
                    "torso": self.masks["torso"],
                    "head": self.masks["head"],
                    "head_torso": self.masks["head"] | self.masks["torso"],
                    "torso_legs": self.masks["torso"] | self.masks["legs"],
                    "hand_L": self.masks["hand_L"],
                    "hand_R": self.masks["hand_R"],
                }[piece.allowed]
                w = borrow_skinning(piece, skinned["rest_vertices"][b], self.weights, allowed, trees)
                T = np.einsum("vj,jab->vab", w, skinned["transforms"][b])
                hom = np.concatenate([piece.vertices, np.ones((len(piece.vertices), 1), np.float32)], 1)
                posed = np.einsum("vab,vb->va", T, hom)[:, :3]
                meshes.append((b, piece, posed @ R.T, piece.faces, True))

        # Stand everybody on the ground and spread the extra people around the first one.
        for b, person in enumerate(people):
            ground = min(m[2][:, 2].min() for m in meshes if m[0] == b)
            if b > 0:
                if b < 3:  # companions, often overlapping the main person
                    dx = rng.choice([-1, 1]) * rng.uniform(0.45, 1.4)
                    dy = rng.uniform(-0.9, 2.5)
                else:  # passers-by further back, a small crowd
                    dx = rng.choice([-1, 1]) * rng.uniform(0.3, 3.5)
                    dy = rng.uniform(2.5, 9.0)
                person.offset = np.array([dx, dy, 0.0])
            person.offset = person.offset - np.array([0, 0, ground])
        meshes = [(b, pc, v + people[b].offset, f, ts) for b, pc, v, f, ts in meshes]
        main_verts = meshes[0][2]

        cam_pos, cam_rot, focal = self._camera(
            people[0], main_verts, skinned["heads"][0] @ rot_z(people[0].yaw).T + people[0].offset, rng
        )
        prop_mats: dict[str, Material] = {}
        for b, person in enumerate(people):
            if person.pose_kind == "sitting":
                heads = skinned["heads"][b] @ rot_z(person.yaw).T + person.offset
                meshes.append((-1, self._seat(heads, person.yaw, rng, prop_mats), None, None, False))
        if rng.random() < 0.25:
            meshes.append((-1, self._occluder(cam_pos, cam_rot, focal, main_verts, rng, prop_mats), None, None, False))
        meshes = [m if m[0] >= 0 else (-1, m[1], m[1].vertices, m[1].faces, False) for m in meshes]

        # Concatenate the scene: per-vertex attributes are parts(7) | texcoord(3) | normal(3) | fields(8).
        all_v, all_f, all_attr, two_sided, face_mesh = [], [], [], [], []
        base = 0
        for mi, (_b, piece, v, f, ts) in enumerate(meshes):
            cam = (v - cam_pos) @ cam_rot.T
            normals = vertex_normals(cam, f)
            if piece is None:
                attr = np.concatenate([body.part_weights, body.rest_vertices, normals, self.body_fields], 1)
            else:
                fields = np.zeros((len(v), len(FIELD_NAMES)), np.float32)
                attr = np.concatenate([piece.parts, piece.vertices, normals, fields], 1)
            all_v.append(cam)
            all_f.append(f + base)
            all_attr.append(attr.astype(np.float32))
            two_sided.append(np.full(len(f), ts))
            face_mesh.append(np.full(len(f), mi))
            base += len(v)
        cam_v = np.concatenate(all_v)
        faces = np.concatenate(all_f)
        attrs = np.concatenate(all_attr)
        face_mesh = np.concatenate(face_mesh)
        z = cam_v[:, 2]
        safe_z = np.maximum(z, 1e-3)
        screen = np.stack([focal * cam_v[:, 0] / safe_z + size / 2, focal * cam_v[:, 1] / safe_z + size / 2], 1)
        frags = rasterize(screen, z, faces, (size, size), np.concatenate(two_sided))

        parts = np.zeros(size * size, np.uint8)
        clothes = np.zeros(size * size, np.uint8)
        background = self.backgrounds.sample(rng, size)
        if rng.random() < 0.7:
            background = self._ground_shadows(background, meshes, cam_pos, cam_rot, focal, rng)
        image = background.reshape(-1, 3)
        if len(frags.pixels):
            a = frags.interpolate(faces, attrs)
            pix_mesh = face_mesh[frags.face.ravel()[frags.pixels]]
            part_lab = np.argmax(np.concatenate([np.full((len(a), 1), 0.05, np.float32), a[:, 1:7]], 1), 1)
            parts[frags.pixels] = part_lab
            colour = np.zeros((len(a), 3), np.float32)
            shine = np.zeros(len(a), np.float32)
            labels = np.zeros(len(a), np.uint8)
            for mi, (b, piece, _v, _f, _ts) in enumerate(meshes):
                sel = np.nonzero(pix_mesh == mi)[0]
                if len(sel) == 0:
                    continue
                mats = people[b].materials if b >= 0 else prop_mats
                if piece is None:
                    names = self._body_materials(people[b], a[sel])
                else:
                    names = np.full(len(sel), piece.material, object)
                for name in sorted(set(names.tolist())):
                    s2 = sel[names == name]
                    m = mats[name]
                    colour[s2] = fabric(m.colour, m.pattern, a[s2, 7:10])
                    labels[s2] = m.label
                    shine[s2] = m.shine
                if piece is None:
                    self._paint_face(a[sel], colour, sel, people[b])
            clothes[frags.pixels] = labels
            shaded = self._shade(colour, a[:, 10:13], shine, rng)
            image[frags.pixels] = shaded
        image = image.reshape(size, size, 3)
        image = antialias_edges(image, frags.face)
        parts, clothes = parts.reshape(size, size), clothes.reshape(size, size)
        if rng.random() < 0.08:
            image, parts, clothes = letterbox(image, parts, clothes, rng)
        return degrade(image, rng), parts, clothes

    def _ground_shadows(self, image, meshes, cam_pos, cam_rot, focal, rng: np.random.Generator) -> np.ndarray:
        """Soft contact shadows on the floor under each person, so that people stand rather than float."""
        size = self.size
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        light_shift = rng.normal(0, 0.15, 2)
        for owner, piece, verts, _f, _ts in meshes:
            if owner < 0 or piece is not None:
                continue
            centre = verts[:, :2].mean(0) + light_shift
            radius = np.ptp(verts[:, :2], 0).max() / 2 * rng.uniform(0.7, 1.1) + 0.1
            ring = np.stack([centre[0] + radius * np.cos(ang), centre[1] + radius * 0.7 * np.sin(ang), 0 * ang], 1)
            cam = (ring - cam_pos) @ cam_rot.T
            if (cam[:, 2] < 0.1).any():
                continue
            pts = focal * cam[:, :2] / cam[:, 2:3] + size / 2
            draw.polygon([tuple(p) for p in pts], fill=int(rng.uniform(90, 200)))
        small = max(8, size // 12)
        soft = np.asarray(mask.resize((small, small), Image.BILINEAR).resize((size, size), Image.BILINEAR), np.float32)
        return image * (1 - soft[..., None] / 255 * 0.6)

    def _seat(self, heads: np.ndarray, yaw: float, rng: np.random.Generator, mats: dict) -> Piece:
        """A chair, bench or stool under a sitting person's thighs (background in both tasks)."""
        bones = self.body.bones
        hips = (heads[bones.index("upperleg01.L")] + heads[bones.index("upperleg01.R")]) / 2
        knees = (heads[bones.index("lowerleg01.L")] + heads[bones.index("lowerleg01.R")]) / 2
        top = min(hips[2], knees[2]) - rng.uniform(0.06, 0.1)
        centre = (hips + knees) / 2 + (hips - knees) * 0.2
        half = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.18, 0.3), max(top, 0.05) / 2])
        verts, faces = box(np.array([0.0, 0.0, 0.0]), half)
        verts = verts @ rot_z(yaw).T + np.array([centre[0], centre[1], top / 2])
        return self._prop_piece(verts, faces, rng, mats)

    def _occluder(self, cam_pos, cam_rot, focal, target_verts, rng: np.random.Generator, mats: dict) -> Piece:
        """A table, pole or box between the camera and the main person, so people are seen partly hidden."""
        centre = target_verts.mean(0)
        depth = float(np.linalg.norm(centre - cam_pos))
        t = rng.uniform(0.3, 0.75)
        spot = cam_pos + (centre - cam_pos) * t
        right, down = cam_rot[0], cam_rot[1]
        view_half = depth * t * self.size / (2 * focal)  # half the visible width at that depth
        kind = rng.random()
        if kind < 0.4:  # pole or door frame
            half = np.array([rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12), 3.0])
            spot = spot + right * rng.uniform(-0.6, 0.6) * view_half
        elif kind < 0.75:  # table or counter edge low in the frame
            half = np.array([view_half * 2, rng.uniform(0.2, 0.5), rng.uniform(0.02, 0.25)])
            spot = spot + down * rng.uniform(0.5, 1.0) * view_half
        else:  # a box or car-sized block to one side
            half = rng.uniform(0.1, 0.45, 3) * view_half
            spot = spot + right * rng.choice([-1, 1]) * rng.uniform(0.6, 1.1) * view_half
        verts, faces = box(np.zeros(3), half)
        yaw = np.degrees(np.arctan2(right[1], right[0]))
        return self._prop_piece(verts @ rot_z(yaw).T + spot, faces, rng, mats)

    @staticmethod
    def _prop_piece(verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator, mats: dict) -> Piece:
        name = f"prop{len(mats)}"
        colour = muted_colour(rng)
        pattern = pattern_params(rng) if rng.random() < 0.4 else {"kind": "solid"}
        mats[name] = Material(colour, pattern, 0, float(rng.uniform(0, 0.4)))
        return Piece(verts.astype(np.float32), faces, name, np.zeros((len(verts), 7), np.float32))

    def _body_materials(self, person: Person, a: np.ndarray) -> np.ndarray:
        """Which outfit material covers each body pixel, from the interpolated body fields."""
        o = person.outfit
        f = {k: a[:, 13 + i] for i, k in enumerate(FIELD_NAMES)}
        rest = a[:, 7:10]
        head = f["head_w"] > 0.5
        hand = f["hand_w"] > 0.5
        foot = (f["foot_w"] > 0.4) | ((f["leg_w"] > 0.5) & (f["leg_t"] > 0.94))
        arm = (f["arm_w"] > 0.5) & ~hand & ~head
        leg = (f["leg_w"] > 0.5) & ~foot
        torso = ~head & ~hand & ~foot & ~arm & ~leg
        names = np.full(len(a), "skin", object)
        th = f["torso_h"]
        # Scoop necklines dip at the front (-y) of the chest.
        front = rest[:, 1] < self.head_centre[1]
        neck_cut = o["neckline"] - np.where(front, 0.06 * np.clip(1 - np.abs(rest[:, 0]) / 0.1, 0, 1), 0)
        names[torso & (th >= o["top_hem"]) & (th < neck_cut)] = "top"
        if "shirt_neck" in o:  # the shirt shows in the jacket's V-neck
            names[torso & (th >= neck_cut) & (th < o["shirt_neck"])] = "shirt"
        names[torso & (th < o["bottom_waist"]) & (th < o["top_hem"])] = "bottom"
        names[arm & (f["arm_t"] < o["sleeve"])] = "top"
        if o["leg_len"] > 0:
            names[leg & (f["leg_t"] < o["leg_len"])] = "bottom"
        elif o["tights"]:
            names[leg] = "tights"
        if not o["barefoot"]:
            names[foot] = "shoes"
        if o["hair"] != "none":
            names[head & self._hair_region(o, rest)] = "hair"
        return names

    def _hair_region(self, outfit: dict, rest: np.ndarray) -> np.ndarray:
        """Scalp points (in the default body's rest space) under the hair: crown and back of the head."""
        rel = rest - self.head_centre
        crown = rest[:, 2] > self.head_top - outfit["hair_line"] - 0.03
        back = (rel[:, 1] > 0.015) & (rest[:, 2] > self.head_centre[2] - 0.03)
        region = crown | back
        if outfit["hair"] == "long":
            region |= (rel[:, 1] > -0.02) & (rest[:, 2] > self.head_centre[2] - 0.08)
        return region

    def _paint_face(self, a: np.ndarray, colour: np.ndarray, sel: np.ndarray, person: Person) -> None:
        """Eyes, brows and lips on the otherwise blank face (positions in the default body's rest space)."""
        head = np.nonzero(a[:, 18] > 0.5)[0]
        rest = a[head, 7:10]
        x, y, z = rest[:, 0], rest[:, 1], rest[:, 2]
        front = y < -0.105
        d = np.min(np.linalg.norm(rest[:, None, :] - self.eye_rest[None], axis=2), 1)
        eye = head[(d < 0.016) & front]
        colour[sel[eye]] *= 0.25
        brow = head[(np.abs(np.abs(x) - 0.032) < 0.017) & (z > 0.712) & (z < 0.721) & front]
        if person.outfit["hair"] != "none":
            colour[sel[brow]] = 0.3 * colour[sel[brow]] + 0.7 * person.materials["hair"].colour
        lips = head[(np.abs(x) < 0.021) & (np.abs(z - 0.636) < 0.006) & (y < -0.13)]
        colour[sel[lips]] *= person.outfit["lips"]

    def _shade(
        self, albedo: np.ndarray, normals: np.ndarray, shine: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        n = normals / (np.linalg.norm(normals, axis=1, keepdims=True) + 1e-9)
        n = np.where((n[:, 2] > 0)[:, None], -n, n)  # two-sided sheets: face the camera
        light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 0.1), -rng.uniform(0.3, 1.0)])
        light /= np.linalg.norm(light)
        diffuse = np.clip(n @ light, 0, 1)
        ambient = rng.uniform(0.25, 0.55)
        sky = 0.12 * (-n[:, 1])  # a little more light from above
        tint = rng.uniform(0.88, 1.12, 3)
        tint = tint / tint.max() * rng.uniform(0.7, 1.05)
        view_half = light + np.array([0, 0, -1.0])
        view_half /= np.linalg.norm(view_half)
        spec = shine * np.clip(n @ view_half, 0, 1) ** 20 * 200
        out = albedo * np.clip(ambient + sky + (1 - ambient) * diffuse, 0, 1.05)[:, None] * tint + spec[:, None]
        return np.clip(out, 0, 255)

    def _camera(self, person: Person, verts: np.ndarray, heads: np.ndarray, rng: np.random.Generator):
        """Camera position, world-to-camera rotation (x right, y down, z forward) and focal length in pixels."""
        size = self.size
        bones = self.body.bones
        fov = rng.uniform(30, 75)
        focal = size / 2 / np.tan(np.deg2rad(fov) / 2)
        top = float(verts[:, 2].max())
        if person.pose_kind == "selfie":
            shot = "selfie"
        else:
            shot = str(rng.choice(["full", "knees", "upper", "head"], p=[0.42, 0.13, 0.25, 0.2]))
        low = {
            "full": float(verts[:, 2].min()),
            "knees": float(heads[bones.index("lowerleg01.L"), 2]),
            "upper": float(heads[bones.index("upperleg01.L"), 2]),
            "head": float(heads[bones.index("spine03"), 2]),
            "selfie": float(heads[bones.index("spine03"), 2]),
        }[shot]
        extent = max(top - low, 0.2)
        fraction = {
            "full": rng.uniform(0.2, 0.95),
            "knees": rng.uniform(0.6, 1.05),
            "upper": rng.uniform(0.6, 1.1),
            "head": rng.uniform(0.7, 1.2),
            "selfie": 1.0,
        }[shot]
        region = verts[(verts[:, 2] >= low) & (verts[:, 2] <= top)]
        centre = np.array([region[:, 0].mean(), region[:, 1].mean(), (top + low) / 2])
        if shot == "selfie":
            # Phone held at arm's length in front of the face, a little above, towards the raised hand.
            facing = rot_z(person.yaw) @ np.array([0.0, -1.0, 0.0])
            side = rot_z(person.yaw) @ np.array([1.0, 0.0, 0.0])
            hands = [heads[bones.index(f"wrist.{s}")] for s in "LR"]
            head = heads[bones.index("head")] + np.array([0, 0, 0.08])
            hand = max(hands, key=lambda h: float((h - head) @ facing))
            lateral = float((hand - head) @ side)
            cam_pos = (
                head
                + facing * rng.uniform(0.4, 0.65)
                + side * np.clip(lateral, -0.25, 0.25) * rng.uniform(0.3, 0.8)
                + np.array([0, 0, rng.uniform(0.0, 0.2)])
            )
            target = head + np.array([0, 0, -0.1]) + rng.normal(0, 0.04, 3)
            focal = size / 2 / np.tan(np.deg2rad(rng.uniform(62, 80)) / 2)
            roll = rng.normal(0, 8)
        else:
            distance = focal * extent / (fraction * size)
            az = np.deg2rad(rng.normal(0, 15))
            el = np.deg2rad(rng.uniform(-10, 30))
            direction = np.array([np.sin(az) * np.cos(el), -np.cos(az) * np.cos(el), np.sin(el)])
            target = centre + rng.uniform(-0.3, 0.3, 3) * extent * np.array([1, 0, 1]) * (1.2 - min(fraction, 1.0))
            cam_pos = target + direction * distance
            roll = rng.normal(0, 4)
        forward = target - cam_pos
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right) + 1e-9
        down = np.cross(forward, right)
        rot = np.stack([right, down, forward])
        c, s_ = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
        rot = np.array([[c, -s_, 0], [s_, c, 0], [0, 0, 1]]) @ rot
        return cam_pos, rot, focal
