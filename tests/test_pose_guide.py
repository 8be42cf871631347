"""Pose guidance: skeleton priors put each part where the skeleton says, and survive checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engines.pose.skeleton import FAR, REGIONS, fuse, region_distances
from engines.tasks import CLOTHES, PARTS

H = W = 200
# One upright person, COCO-17 (x, y) in pixels of a 200×200 frame, facing the camera.
PERSON = {
    0: (100, 30), 1: (95, 26), 2: (105, 26), 3: (90, 28), 4: (110, 28),
    5: (80, 55), 6: (120, 55), 7: (70, 85), 8: (130, 85), 9: (66, 115), 10: (134, 115),
    11: (88, 115), 12: (112, 115), 13: (86, 150), 14: (114, 150), 15: (85, 185), 16: (115, 185),
}


def keypoints(points: dict[int, tuple[float, float]] = PERSON, score: float = 0.9, people: int = 1) -> torch.Tensor:
    """(1, people, 17, 3) MoveNet-style (y, x, score) in [0, 1]; unseen keypoints score 0."""
    out = torch.zeros(1, people, 17, 3)
    for index, (x, y) in points.items():
        out[0, 0, index] = torch.tensor([y / H, x / W, score])
    return out


def rules_labels(kp: torch.Tensor, task: str = "parts", gate: float = 0.99) -> np.ndarray:
    classes = PARTS.num_classes if task == "parts" else CLOTHES.num_classes
    gated = torch.full((1, classes, H, W), math.log(gate / (classes - 1)))
    gated[:, 0] = math.log(1 - gate)
    out = fuse(gated, kp, task, mode="rules", prior_stride=1)
    return out.argmax(1)[0].numpy()


def midpoint(a: int, b: int) -> tuple[int, int]:
    (xa, ya), (xb, yb) = PERSON[a], PERSON[b]
    return round((ya + yb) / 2), round((xa + xb) / 2)


@pytest.mark.parametrize(("a", "b", "part"), [
    (5, 7, "upper arms"), (6, 8, "upper arms"), (7, 9, "lower arms"), (8, 10, "lower arms"),
    (11, 13, "upper legs"), (12, 14, "upper legs"), (13, 15, "lower legs"), (14, 16, "lower legs"),
])
def test_rules_put_each_limb_between_its_joints(a, b, part):
    labels = rules_labels(keypoints())
    y, x = midpoint(a, b)
    assert PARTS.classes[labels[y, x]] == part


def test_rules_head_torso_hands_feet_and_far_background():
    labels = rules_labels(keypoints())
    assert PARTS.classes[labels[28, 100]] == "head"  # between the eyes
    assert PARTS.classes[labels[85, 100]] == "torso"  # the middle of shoulders and hips
    assert PARTS.classes[labels[123, 64]] == "lower arms"  # the hand, beyond the wrist
    assert PARTS.classes[labels[192, 85]] == "lower legs"  # the foot, beyond the ankle
    assert labels[100, 10] == 0 and labels[10, 190] == 0  # far from the skeleton: background
    clothes = rules_labels(keypoints(), task="clothes")
    assert CLOTHES.classes[clothes[192, 85]] == "shoes"
    assert CLOTHES.classes[clothes[150, 100 - 14]] in ("lower clothes", "head & skin")


def test_a_frame_without_skeletons_keeps_the_network_answer_and_an_unseen_limb_has_no_shape():
    gated = torch.log_softmax(torch.randn(1, 7, H, W), 1)
    unseen = keypoints(score=0.1)  # every keypoint below the threshold: nobody found
    assert torch.equal(fuse(gated, unseen, "parts", prior_stride=1), gated)
    without_left_forearm = {k: v for k, v in PERSON.items() if k not in (9,)}
    distances = region_distances(keypoints(without_left_forearm), H, W)
    lower_arms = distances[0, 0, REGIONS.index("lower arms")]
    y, x = midpoint(7, 9)
    assert lower_arms[y, x] > 1.0  # only the right forearm's capsule is left, far from here
    assert lower_arms.min() < FAR


def test_a_face_alone_still_gets_a_torso_below_it():
    face_only = {k: v for k, v in PERSON.items() if k <= 4}
    labels = rules_labels(keypoints(face_only))
    assert PARTS.classes[labels[28, 100]] == "head"
    assert PARTS.classes[labels[70, 100]] == "torso"


def test_fused_keeps_the_network_where_the_skeleton_allows_two_parts():
    """Inside the torso polygon an arm's capsule also reaches 0: there the network decides."""
    kp = keypoints({**PERSON, 9: (95, 100)})  # the left forearm crosses in front of the body
    # The network is sure of the person and leans to "lower arms" everywhere (0.5 against 0.1).
    gated = torch.full((1, 7, H, W), math.log(0.99 * 0.1))
    gated[:, 0] = math.log(0.01)
    gated[:, PARTS.classes.index("lower arms")] = math.log(0.99 * 0.5)
    fused = fuse(gated, kp, "parts", mode="fused", prior_stride=1).argmax(1)[0]
    assert PARTS.classes[fused[93, 90]] == "lower arms"  # on the forearm, inside the torso polygon
    assert PARTS.classes[fused[70, 100]] == "torso"  # the chest, far from the forearm
    assert PARTS.classes[fused[165, 86]] == "lower legs"  # the skeleton overrules the network's lean
    assert fused[100, 10] == 0  # beyond reach of the skeleton the network's person is dropped


def test_fuse_exports_with_static_shapes():
    class Fuse(torch.nn.Module):
        def forward(self, gated, kp):
            return fuse(gated, kp, "clothes")

    gated = torch.log_softmax(torch.randn(1, 6, 96, 96), 1)
    program = torch.export.export(Fuse(), (gated, keypoints(people=6)))
    assert torch.allclose(program.module()(gated, keypoints(people=6)), Fuse()(gated, keypoints(people=6)))
