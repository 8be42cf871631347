"""Body-part priors drawn from detected skeletons, and their fusion with the parsing network.

A real-trained pose model knows where a person's shoulders, elbows, hips and knees are, which
a parser trained on synthetic renders often does not: it calls a long coat legs, or an arm torso.
So each detected person's COCO-17 keypoints are turned into one shape per body part:

- head: a capsule from the face keypoints' centre up to the top of the head, and down to the neck;
- torso: the quadrilateral of shoulders and hips (when the hips are out of the frame, a box below
  the shoulders);
- upper arms, lower arms (with the hand beyond the wrist), upper legs, lower legs and feet:
  capsules along their bones.

The prior of part ``c`` at a pixel is ``−d_c / r_c``: its distance to the part's shape in units of
the part's radius (0 inside). Radii scale with the person (shoulder width, torso length, face
size), so the same rule fits a close-up and a pedestrian 40 pixels tall.

:func:`fuse_parts` combines the priors with the gated network's output (``person_gate.py``),
``log P(person) + log P(part | person)``, in two ways:

- ``"rules"``: the person mask comes from the network's gate; inside it, the part whose shape is
  nearest wins (the torso inside its polygon), and the network's part scores are ignored;
- ``"fused"``: part scores = the network's ``log P(part | person)`` + ``weight`` × prior, so the
  network decides where the skeleton is ambiguous (an arm in front of the torso) and the
  skeleton decides where the network is lost.

Both also remove person pixels far from every detected skeleton (an out-of-focus crowd, an
animal, a poster), since the gate alone marks anything person-like. Everything is tensor maths
with static shapes, so it traces and exports with the network.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..numerics import log_sigmoid

# COCO-17 keypoint order, as MoveNet and most pose models give it.
NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR = 0, 1, 2, 3, 4
LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, RIGHT_ELBOW, LEFT_WRIST, RIGHT_WRIST = 5, 6, 7, 8, 9, 10
LEFT_HIP, RIGHT_HIP, LEFT_KNEE, RIGHT_KNEE, LEFT_ANKLE, RIGHT_ANKLE = 11, 12, 13, 14, 15, 16

# Regions, in the order of the prior's channels. "foot" is its own region because it is "lower
# legs" for parts but "shoes" for clothes.
REGIONS = ("head", "torso", "upper arms", "lower arms", "upper legs", "lower legs", "foot")
HEAD, TORSO, UPPER_ARMS, LOWER_ARMS, UPPER_LEGS, LOWER_LEGS, FOOT = range(len(REGIONS))
# Region -> parts class index (background 0, head 1, torso 2, upper arms 3, lower arms 4, upper legs 5, lower legs 6).
REGION_TO_PART = (1, 2, 3, 4, 5, 6, 6)

# Limb capsules: (region, start keypoint, end keypoint, extension beyond the end as a share of the bone).
LIMBS: tuple[tuple[int, int, int, float], ...] = (
    (UPPER_ARMS, LEFT_SHOULDER, LEFT_ELBOW, 0.0),
    (UPPER_ARMS, RIGHT_SHOULDER, RIGHT_ELBOW, 0.0),
    (LOWER_ARMS, LEFT_ELBOW, LEFT_WRIST, 0.35),  # the hand lies beyond the wrist
    (LOWER_ARMS, RIGHT_ELBOW, RIGHT_WRIST, 0.35),
    (UPPER_LEGS, LEFT_HIP, LEFT_KNEE, 0.0),
    (UPPER_LEGS, RIGHT_HIP, RIGHT_KNEE, 0.0),
    (LOWER_LEGS, LEFT_KNEE, LEFT_ANKLE, 0.0),
    (LOWER_LEGS, RIGHT_KNEE, RIGHT_ANKLE, 0.0),
)
FEET: tuple[tuple[int, int], ...] = ((LEFT_KNEE, LEFT_ANKLE), (RIGHT_KNEE, RIGHT_ANKLE))

# Radii as shares of the person's scale (see _person_scale), set by anatomy: an upper arm is
# about a quarter of a shoulder width thick, a thigh a third.
RADIUS = {HEAD: 0.28, TORSO: 0.30, UPPER_ARMS: 0.26, LOWER_ARMS: 0.22, UPPER_LEGS: 0.34, LOWER_LEGS: 0.26,
          FOOT: 0.22}
FAR = 1.0e4  # the distance of a region with no shape (its keypoints were not seen)


def _segment_distance(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """Distance from points (…, H, W) to segments a–b (…, 1, 1); a zero-length segment is a point."""
    dx, dy = bx - ax, by - ay
    length2 = (dx * dx + dy * dy).clamp_min(1e-6)
    t = (((px - ax) * dx + (py - ay) * dy) / length2).clamp(0.0, 1.0)
    ex, ey = px - (ax + t * dx), py - (ay + t * dy)
    return torch.sqrt(ex * ex + ey * ey)  # not torch.hypot: OpenVINO has no conversion for it


def _person_scale(xy: Tensor, seen: Tensor) -> Tensor:
    """One length per person, (B, P): the shoulder width or 0.6 × the torso length, whichever is
    larger, and at least 1.6 × the face's size; for a face alone, 2.2 × its size."""

    def dist(i: int, j: int) -> tuple[Tensor, Tensor]:
        return torch.linalg.vector_norm(xy[..., i, :] - xy[..., j, :], dim=-1), seen[..., i] & seen[..., j]

    def known(pair: tuple[Tensor, Tensor]) -> Tensor:
        return torch.where(pair[1], pair[0], torch.zeros_like(pair[0]))

    shoulders = known(dist(LEFT_SHOULDER, RIGHT_SHOULDER))
    torso = 0.6 * torch.maximum(known(dist(LEFT_SHOULDER, LEFT_HIP)), known(dist(RIGHT_SHOULDER, RIGHT_HIP)))
    face = torch.maximum(known(dist(LEFT_EAR, RIGHT_EAR)),
                         2.0 * torch.maximum(known(dist(LEFT_EYE, LEFT_EAR)), known(dist(RIGHT_EYE, RIGHT_EAR))))
    face = torch.maximum(face, 2.5 * known(dist(LEFT_EYE, RIGHT_EYE)))
    body = torch.maximum(shoulders, torso)
    return torch.where(body > 0, torch.maximum(body, 1.6 * face), 2.2 * face)


# The segments every person is drawn with, in this order; _REGION_SLICES says which belong to
# which region. Computing all of them in one batched expression keeps the op count small.
_REGION_SLICES = (slice(0, 1), slice(1, 5), slice(5, 7), slice(7, 9), slice(9, 11), slice(11, 13), slice(13, 15))
_TORSO_MIDLINE = 15
# Inside the torso polygon, the torso's distance is its distance from a band this wide (in
# scales) around the midline: at the polygon's sides, where a hanging upper arm overlaps it, the
# arm's capsule then wins.
_TORSO_CORE = 0.22


def _segments(xy: Tensor, seen: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Start and end points (B, P, S, 2) and validity (B, P, S) of every segment (segments 1–4 are
    the torso polygon's edges, in order), whether the torso polygon exists (B, P), and whether it
    was drawn from shoulders and hips rather than guessed (B, P)."""

    def at(i: int) -> Tensor:
        return xy[..., i, :]

    def both(i: int, j: int) -> Tensor:
        return seen[..., i] & seen[..., j]

    s = scale[..., None]
    # Head: a capsule around the face keypoints' centre (about eye level), from just above it to
    # the chin; with the head's radius, the crown and the neck end up inside it.
    face_ids = [NOSE, LEFT_EYE, RIGHT_EYE, LEFT_EAR, RIGHT_EAR]
    face_seen = seen[..., face_ids].to(xy.dtype)  # (B, P, 5)
    count = face_seen.sum(-1)
    centre = (xy[..., face_ids, :] * face_seen[..., None]).sum(-2) / count.clamp_min(1.0)[..., None]
    has_shoulders = both(LEFT_SHOULDER, RIGHT_SHOULDER)
    neck = (at(LEFT_SHOULDER) + at(RIGHT_SHOULDER)) / 2
    image_up = torch.tensor([0.0, -1.0], dtype=xy.dtype, device=xy.device).expand_as(centre)
    up = torch.where(has_shoulders[..., None], centre - neck, image_up)
    up = up / torch.linalg.vector_norm(up, dim=-1, keepdim=True).clamp_min(1e-6)
    head_top, chin = centre + 0.03 * s * up, centre - 0.2 * s * up
    has_face = count > 0

    # Torso: the quadrilateral of shoulders and hips. The shoulder corners move a little inwards:
    # the outer shoulder is arm. Without hips, a box of 1.4 scales below the shoulders; with only
    # a face (a close-up cut off at the chest), a box below the chin.
    inset = 0.12
    ls, rs = at(LEFT_SHOULDER), at(RIGHT_SHOULDER)
    ls_in, rs_in = ls + inset * (rs - ls), rs + inset * (ls - rs)
    down = -up * 1.4 * s
    quad = torch.stack([ls_in, rs_in, at(RIGHT_HIP), at(LEFT_HIP)], dim=-2)
    below_shoulders = torch.stack([ls_in, rs_in, rs_in + down, ls_in + down], dim=-2)
    across = torch.stack([-up[..., 1], up[..., 0]], dim=-1) * 0.6 * s  # perpendicular to "up"
    neck_line = centre - 0.35 * s * up
    below_face = torch.stack([neck_line - across, neck_line + across, neck_line + across - 1.6 * s * up,
                              neck_line - across - 1.6 * s * up], dim=-2)
    has_hips = both(LEFT_HIP, RIGHT_HIP)
    corners = torch.where((has_shoulders & has_hips)[..., None, None], quad,
                          torch.where(has_shoulders[..., None, None], below_shoulders, below_face))
    torso_ok = has_shoulders | has_face

    starts, ends, valid = [head_top], [chin], [has_face]
    for k in range(4):
        starts.append(corners[..., k, :])
        ends.append(corners[..., (k + 1) % 4, :])
        valid.append(torso_ok)
    for _, start, end, extend in LIMBS:
        a, b = at(start), at(end)
        starts.append(a)
        ends.append(b + extend * (b - a))
        valid.append(both(start, end))
    for knee, ankle in FEET:  # around the ankle and a third of a shin on: the foot, and a shoe's top
        a, shin = at(ankle), at(ankle) - at(knee)
        starts.append(a - 0.1 * shin)
        ends.append(a + 0.3 * shin)
        valid.append(both(knee, ankle))
    # The torso's midline, from the middle of its top edge to the middle of its bottom edge.
    starts.append((corners[..., 0, :] + corners[..., 1, :]) / 2)
    ends.append((corners[..., 2, :] + corners[..., 3, :]) / 2)
    valid.append(torso_ok)
    return torch.stack(starts, -2), torch.stack(ends, -2), torch.stack(valid, -1), torso_ok, has_shoulders & has_hips


def region_distances(keypoints: Tensor, height: int, width: int, *, threshold: float = 0.3,
                     min_person_score: float = 0.2, person_scores: Tensor | None = None,
                     sure_torso: bool = False) -> Tensor:
    """Scaled distance of every pixel to every region of every person: (B, P, R, H, W).

    With ``sure_torso`` one more channel follows the regions: the torso's distance where it was
    drawn from shoulders and hips, ``FAR`` where it was guessed.

    ``keypoints`` is (B, P, 17, 3) with (y, x) in [0, 1] of the frame and a score; a keypoint
    counts when its score ≥ ``threshold``, a person when ``person_scores`` (B, P) ≥
    ``min_person_score``. Distances are in units of each region's radius; ``FAR`` where a region
    has no shape.
    """
    device, dtype = keypoints.device, keypoints.dtype
    xy = torch.stack([keypoints[..., 1] * width, keypoints[..., 0] * height], dim=-1)  # (B, P, 17, 2) pixels
    seen = keypoints[..., 2] >= threshold
    if person_scores is not None:
        seen = seen & (person_scores >= min_person_score)[..., None]
    scale = _person_scale(xy, seen)  # (B, P)
    alive = scale > 1.0
    scale = scale.clamp_min(1.0)
    starts, ends, valid, torso_ok, torso_drawn = _segments(xy, seen, scale)

    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5).view(1, 1, 1, height, 1)
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5).view(1, 1, 1, 1, width)
    ax, ay = starts[..., 0, None, None], starts[..., 1, None, None]
    bx, by = ends[..., 0, None, None], ends[..., 1, None, None]
    distance = _segment_distance(xs, ys, ax, ay, bx, by)  # (B, P, S, H, W)
    distance = torch.where(valid[..., None, None] & alive[..., None, None, None], distance,
                           torch.full_like(distance, FAR))
    # Inside the torso polygon the distance is 0: all edge cross products share one sign.
    tx, ty = ax[:, :, 1:5], ay[:, :, 1:5]
    cross = (bx[:, :, 1:5] - tx) * (ys - ty) - (by[:, :, 1:5] - ty) * (xs - tx)
    inside = ((cross >= 0).all(2) | (cross <= 0).all(2)) & torso_ok[..., None, None]  # (B, P, H, W)
    regions = []
    for region, part in enumerate(_REGION_SLICES):
        nearest = distance[:, :, part].amin(2)
        if region == TORSO:
            core = (distance[:, :, _TORSO_MIDLINE] - _TORSO_CORE * scale[..., None, None]).clamp_min(0.0)
            nearest = torch.where(inside, core, nearest)
        regions.append(nearest / (RADIUS[region] * scale)[..., None, None])
    if sure_torso:
        drawn = (torso_drawn & alive)[..., None, None]
        regions.append(torch.where(drawn, regions[TORSO], torch.full_like(regions[TORSO], FAR)))
    return torch.stack(regions, dim=2)


def region_prior(keypoints: Tensor, height: int, width: int, **kwargs) -> Tensor:
    """Each region's scaled distance to the nearest person: (B, R, H, W), FAR where no one is."""
    return region_distances(keypoints, height, width, **kwargs).amin(dim=1)


# Compatibility of regions with clothing classes (background, head & skin, upper clothes, lower
# clothes, bag, shoes): which clothes each region can wear. The network chooses among them.
CLOTHES_OF_REGION = (
    (0.0, 1.0, 0.05, 0.0, 0.05, 0.0),   # head: face, hair, hat
    (0.0, 0.3, 1.0, 0.1, 0.4, 0.0),     # torso: a shirt, a coat; a bag worn across; bare skin
    (0.0, 1.0, 1.0, 0.0, 0.3, 0.0),     # upper arms: a sleeve or bare skin
    (0.0, 1.0, 1.0, 0.0, 0.4, 0.0),     # lower arms and hands: skin or sleeve; a bag held
    (0.0, 0.5, 0.5, 1.0, 0.3, 0.0),     # upper legs: trousers, a skirt; a coat or dress over them
    (0.0, 0.6, 0.2, 1.0, 0.1, 0.3),     # lower legs: trousers, bare shins, boots
    (0.0, 0.2, 0.0, 0.3, 0.0, 1.0),     # feet: shoes
)


def class_prior(distances: Tensor, task: str) -> Tensor:
    """Per-class prior logits (B, C−1, H, W) for the person classes of ``task``: −scaled distance
    of the nearest compatible region (log compatibility added for clothes)."""
    if task == "parts":
        # Regions 0–5 are the parts in order; the foot (6) is lower legs too. Slices, not index
        # lists: OpenVINO converts advanced indexing wrongly here.
        lower_legs = torch.minimum(distances[:, LOWER_LEGS], distances[:, FOOT])[:, None]
        return -torch.cat([distances[:, :LOWER_LEGS], lower_legs], dim=1)
    if task == "clothes":
        table = torch.tensor(CLOTHES_OF_REGION, dtype=distances.dtype, device=distances.device)[:, 1:]
        log_table = torch.log(table.clamp_min(1e-3))  # (R, C−1)
        # For each class: max over regions of (−d_r + log compat_rc).
        scores = -distances[:, :, None] + log_table[None, :, :, None, None]  # (B, R, C−1, H, W)
        return scores.amax(1)
    raise KeyError(f"unknown task {task!r}; valid tasks: parts, clothes")


def fuse(gated: Tensor, keypoints: Tensor, task: str, *, mode: str = "fused", weight: float = 2.0,
         reach: float = 2.0, person_scores: Tensor | None = None, prior_stride: int = 4,
         threshold: float = 0.3, min_person_score: float = 0.2, fill: float = 0.0) -> Tensor:
    """Combine a gated model's log-probabilities (B, C, H, W; class 0 background) with skeletons.

    ``mode`` "rules" or "fused" (see the module docstring). ``reach``: person pixels further than
    this many radii from every region of every person become background. ``fill``: pixels within
    this many radii of a region are person even where the gate says not (small people the gate
    misses); 0 leaves the person/background decision to the gate.

    The fusion runs on a grid ``prior_stride`` times coarser than ``gated`` (its log-probabilities
    average-pooled), and returns log-probabilities on that grid: the engines upsample scores before
    the argmax, so borders stay smooth, and the work drops by ``prior_stride``².
    """
    if mode not in ("rules", "fused"):
        raise KeyError(f"unknown pose fusion mode {mode!r}; valid: rules, fused")
    if prior_stride > 1:
        gated = torch.log_softmax(F.avg_pool2d(gated, prior_stride, prior_stride, ceil_mode=True), dim=1)
    _, classes, height, width = gated.shape
    distances = region_prior(keypoints, height, width, threshold=threshold, person_scores=person_scores,
                             min_person_score=min_person_score, sure_torso=True)
    distances, drawn_torso = distances[:, :len(REGIONS)], distances[:, len(REGIONS):]
    prior = class_prior(distances, task)  # (B, C−1, h, w)
    nearest = distances.amin(1, keepdim=True)  # (B, 1, h, w)
    # Probabilities stay in log space throughout, and 1 − p is never formed from a p near 1: at
    # bfloat16 (OpenVINO on CPUs with bf16 units) that rounds to 0 and every pixel becomes person.
    log_background = gated[:, :1]  # log(1 − P(person))
    log_person = torch.logaddexp(gated[:, 1:].logsumexp(1, keepdim=True), torch.full_like(log_background, -1e4))
    parts_given_person = gated[:, 1:] - log_person
    if fill > 0:  # P(person) = 1 − (1 − gate)(1 − inside the skeleton's shapes)
        # Not a guessed torso (hips unseen, under a coat or out of the frame): what stands in front
        # of such a torso (a tripod, a held helmet) is better left to the gate.
        shapes = torch.cat([distances[:, :TORSO], drawn_torso, distances[:, TORSO + 1:]], dim=1)
        inside = 6.0 * (fill - shapes.amin(1, keepdim=True))  # logit of "inside a shape"
        log_background = log_background + log_sigmoid(-inside)
        log_person = torch.log1p(-log_background.exp().clamp(max=1.0)).clamp_min(-1e4)
    # Person pixels beyond reach of every skeleton: a soft step from 1 (inside) to 0 (one radius on).
    near = 4.0 * (reach - nearest)  # logit of "near a skeleton"
    if mode == "rules":
        # The nearest region wins outright. Inside the torso polygon (distance 0) the torso wins
        # ties for parts: by rules alone, an arm in front of the body cannot be told from it.
        bias = torch.zeros(classes - 1, dtype=gated.dtype, device=gated.device)
        if task == "parts":
            bias[1] = 1.0
        scores = 50.0 * prior + bias.view(1, -1, 1, 1)
    else:
        scores = parts_given_person + weight * prior
    parts = torch.log_softmax(scores, dim=1)
    person = log_person + log_sigmoid(near)
    # 1 − P(person)·P(near) = (1 − P(person)) + P(person)·(1 − P(near)), summed in log space.
    background = torch.logaddexp(log_background, log_person + log_sigmoid(-near))
    guided = torch.cat([background, person + parts], dim=1)
    # A frame where the pose model found no one (a face too close for it, say) keeps the
    # network's own answer rather than losing its people.
    found = (nearest.amin(dim=(1, 2, 3)) < reach).view(-1, 1, 1, 1)
    return torch.where(found, guided, gated)
