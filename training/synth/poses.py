"""Random poses within joint limits: standing, walking, arms raised, sitting, crouching, turning, selfie."""

from __future__ import annotations

import math

import numpy as np

from .body import BodyModel

POSE_KINDS = ("standing", "walking", "arms_up", "sitting", "crouching", "turning", "selfie", "gesturing")
POSE_WEIGHTS = np.array([0.22, 0.2, 0.1, 0.1, 0.06, 0.1, 0.08, 0.14])

# Hard joint limits in degrees (flex, abduct, twist); every sampled angle is clipped to these.
LIMITS = {
    "upperarm01": ((-60, 170), (-45, 120), (-70, 70)),
    "lowerarm01": ((0, 145), (0, 0), (-60, 60)),
    "wrist": ((-50, 50), (-25, 25), (0, 0)),
    "clavicle": ((-10, 15), (-5, 20), (0, 0)),
    "upperleg01": ((-30, 130), (-20, 40), (-35, 35)),
    "lowerleg01": ((-150, 0), (0, 0), (-10, 10)),
    "spine": ((-10, 20), (-10, 10), (-20, 20)),
    "neck": ((-25, 30), (-20, 20), (-35, 35)),
}


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector a onto unit vector b."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def _limit(joint: str) -> tuple:
    return LIMITS["spine" if joint.startswith("spine") else "neck" if joint.startswith(("neck", "head")) else joint]


class PoseSampler:
    """Samples a dict bone index -> 3x3 rotation (anny local-ref) for one person."""

    def __init__(self, body: BodyModel) -> None:
        self.body = body

    def sample(self, rng: np.random.Generator, kind: str | None = None) -> tuple[str, dict[int, np.ndarray]]:
        if kind is None:
            kind = str(rng.choice(POSE_KINDS, p=POSE_WEIGHTS / POSE_WEIGHTS.sum()))
        a: dict[str, list[float]] = {}  # joint -> [flex, abduct, twist]

        def put(joint: str, flex: float = 0.0, abduct: float = 0.0, twist: float = 0.0) -> None:
            a[joint] = [flex, abduct, twist]

        def n(scale: float) -> float:
            return float(rng.normal(0.0, scale))

        def u(lo: float, hi: float) -> float:
            return float(rng.uniform(lo, hi))

        # Relaxed arms hang close to the body: the rest pose is an A-pose with ~45 degrees abduction.
        for s in "LR":
            put(f"upperarm01.{s}", n(10), u(-42, -25), n(15))
            put(f"lowerarm01.{s}", u(5, 40), 0, n(20))
            put(f"upperleg01.{s}", n(4), u(-8, 4), n(6))
            put(f"lowerleg01.{s}", -abs(n(5)), 0, 0)
            put(f"wrist.{s}", n(15), n(10), 0)
        spine_flex, spine_side, spine_twist = n(4), n(3), n(5)
        head_flex, head_side, head_twist = n(8), n(6), n(15)

        selfie_arm = None
        if kind == "walking":
            swing = u(15, 35) * rng.choice([-1, 1])
            for s, sign in (("L", 1), ("R", -1)):
                hip = swing * sign
                put(f"upperleg01.{s}", hip, u(-4, 2), n(5))
                put(f"lowerleg01.{s}", -u(5, 15) - (u(15, 45) if hip < 0 else 0), 0, 0)
                put(f"upperarm01.{s}", -hip * u(0.5, 1.0), u(-40, -28), n(10))
                put(f"lowerarm01.{s}", u(10, 50), 0, n(15))
            spine_twist += swing * 0.2
        elif kind == "arms_up":
            for s in "LR":
                if rng.random() < 0.75:
                    if rng.random() < 0.5:
                        put(f"upperarm01.{s}", u(20, 160), u(-10, 60), n(25))
                    else:
                        put(f"upperarm01.{s}", u(-10, 40), u(30, 110), n(25))
                    put(f"lowerarm01.{s}", u(0, 135), 0, n(30))
        elif kind in ("sitting", "crouching"):
            hip_lo, hip_hi, knee_lo, knee_hi = (70, 100, 70, 110) if kind == "sitting" else (95, 125, 110, 145)
            for s in "LR":
                put(f"upperleg01.{s}", u(hip_lo, hip_hi), u(-6, 25), n(10))
                put(f"lowerleg01.{s}", -u(knee_lo, knee_hi), 0, 0)
                put(f"upperarm01.{s}", u(-5, 60), u(-40, -15), n(15))
                put(f"lowerarm01.{s}", u(20, 110), 0, n(20))
            spine_flex += u(0, 25) if kind == "crouching" else u(-5, 12)
        elif kind == "turning":
            spine_twist += u(-20, 20)
            head_twist += u(-35, 35)
            s = str(rng.choice(["L", "R"]))
            put(f"upperleg01.{s}", u(-10, 25), u(-5, 15), n(15))
            put(f"lowerleg01.{s}", -u(0, 40), 0, 0)
        elif kind == "selfie":
            s = str(rng.choice(["L", "R"]))
            # Upper arm forward and a little out, elbow almost straight: the hand holds the phone.
            # Set as a direction (below), since flex and abduction from the A-pose do not commute.
            selfie_arm = (s, np.array([(1 if s == "L" else -1) * u(0.2, 0.5), -1.0, u(-0.1, 0.35)]))
            put(f"lowerarm01.{s}", u(0, 25), 0, n(5))
            head_flex += u(-15, 5)
        elif kind == "gesturing":
            for s in "LR":
                if rng.random() < 0.6:
                    put(f"upperarm01.{s}", u(-20, 80), u(-35, 30), n(30))
                    put(f"lowerarm01.{s}", u(30, 140), 0, n(40))
        # standing: the relaxed defaults.

        for i, name in enumerate(("spine01", "spine02", "spine03", "spine04", "spine05")):
            frac = (0.15, 0.2, 0.25, 0.2, 0.2)[i]
            put(name, spine_flex * frac * 5 / 5, spine_side * frac, spine_twist * frac)
        for name, frac in (("neck01", 0.3), ("neck02", 0.3), ("head", 0.4)):
            put(name, head_flex * frac, head_side * frac, head_twist * frac)

        rotations: dict[int, np.ndarray] = {}
        for joint, angles in a.items():
            lim = _limit(joint.split(".")[0])
            flex, abd, twist = (min(max(v, lo), hi) for v, (lo, hi) in zip(angles, lim))
            j = self.body.joints[joint]
            rotations[j.index] = j.rotation(flex, abd, twist)
        # Relaxed, half-closed or fist-like hands instead of anny's flat open palm. In the A-pose the palm
        # faces the thigh, so the knuckle axis is roughly y; the sign mirrors between sides.
        for side, sign in (("L", 1.0), ("R", -1.0)):
            curl = u(0, 85) if rng.random() < 0.8 else 0.0
            for finger in range(2, 6):
                spread = u(0.8, 1.15)
                for seg, share in ((1, 0.9), (2, 1.1), (3, 0.8)):
                    angle = math.radians(curl * share * spread)
                    c, s_ = math.cos(angle * sign), math.sin(angle * sign)
                    rot_y = np.array([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]])
                    rotations[self.body.bone(f"finger{finger}-{seg}.{side}")] = rot_y
        if selfie_arm is not None:
            side, direction = selfie_arm
            j = self.body.joints[f"upperarm01.{side}"]
            rotations[j.index] = rotation_between(j.twist, direction / np.linalg.norm(direction))
        return kind, rotations
