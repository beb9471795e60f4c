"""A drawn chest radiograph: anatomy, calcified coronary plaques, noise.

Every shape is defined in normalised image coordinates (x to the image's right, y down, both in
[0, 1]) and drawn with OpenCV polygons, so one description renders at any size. Soft-tissue layers
are drawn at a low working resolution and upsampled (they are smooth); bones, plaques and noise are
drawn at full resolution. Intensities live in an "attenuation" space that is mapped to a
bone-bright image with ``1 - exp(-k * A)``, like a detector behind a patient.

The random streams are split on purpose: the anatomy, pose and noise of a patient come from one
generator and the plaques from another, so the same seed with and without plaques gives images
that differ only where plaques were drawn (the ``--no-signal`` negative control).

Why one module of ~530 lines: it is the synthetic chest's geometry (anatomy, pose, plaques, the frontal,
lateral and CT renderings), whose parts share one coordinate frame and only make sense together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "Anatomy",
    "Pose",
    "Plaque",
    "sample_anatomy",
    "sample_pose",
    "sample_plaques",
    "Radiograph",
    "render_frontal",
    "render_lateral",
    "render_ct_slice",
]

_SHIFT = 4  # fixed-point bits for sub-pixel OpenCV drawing
_SOFT_RES = 256  # working resolution of the smooth soft-tissue layers


@dataclass(frozen=True)
class Pose:
    """Patient placement for one exposure: shift, rotation, scale, exposure and noise."""

    dx: float = 0.0
    dy: float = 0.0
    angle_deg: float = 0.0
    scale: float = 1.0
    exposure: float = 1.0  # k in 1 - exp(-k A): higher means a denser-looking image
    gamma: float = 1.0
    noise: float = 0.012  # standard deviation of the quantum noise, in image units
    heel: float = 0.0  # left-right exposure gradient (anode heel effect)
    heart_magnification: float = 1.0  # AP films magnify the heart


@dataclass(frozen=True)
class Plaque:
    """One calcification, on a coronary curve in heart-local coordinates."""

    vessel: int  # index into _CORONARIES (0 LAD, 1 LCx, 2 RCA)
    t: float  # position along the vessel, 0 = ostium
    length: float  # along the vessel, normalised image units
    width: float  # normalised image units
    density: float  # attenuation added where drawn


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters of one patient's chest (all in normalised image units)."""

    sex: str
    body_half_width: float
    lung_half_width: tuple[float, float]  # image-left (patient's right), image-right
    lung_apex_y: float
    dome_y: tuple[float, float]
    dome_height: float
    heart_center: tuple[float, float]
    heart_axes: tuple[float, float]
    heart_angle_deg: float
    rib_spacing: float
    rib_start_y: float
    bone_density: float
    soft_density: float
    granulomas: tuple[tuple[float, float, float], ...] = field(default_factory=tuple)  # x, y, radius
    texture_seed: int = 0


# Coronary centre lines as cubic Bezier control points in heart-local units: (u, v) in [-1, 1],
# u along the heart's long axis towards the apex (lower image right), v across it.
_CORONARIES: tuple[np.ndarray, ...] = (
    np.array([(-0.45, -0.80), (-0.05, -0.70), (0.45, -0.35), (0.92, 0.05)]),  # LAD: groove to apex
    np.array([(-0.40, -0.82), (0.05, -1.00), (0.50, -0.85), (0.80, -0.50)]),  # LCx: AV groove
    np.array([(-0.62, -0.62), (-1.00, -0.30), (-0.98, 0.35), (-0.55, 0.78)]),  # RCA: right border
)
_VESSEL_WEIGHTS = np.array([0.5, 0.25, 0.25])


def sample_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    """Draw one patient's body shape.

    Args:
        rng: the patient's anatomy generator.
        sex: ``"M"`` or ``"F"`` (women get breast shadows and a slightly smaller frame).

    Returns:
        The patient's anatomy.
    """
    frame = 1.0 if sex == "M" else 0.96
    lung_w = rng.uniform(0.33, 0.38) * frame
    heart_a = rng.uniform(0.14, 0.19)  # wide spread: some cardiomegaly
    n_gran = int(rng.choice([0, 0, 0, 0, 1, 1, 2]))
    granulomas = tuple(
        (
            float(0.5 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.32)),
            float(rng.uniform(0.22, 0.62)),
            float(rng.uniform(0.003, 0.008)),
        )
        for _ in range(n_gran)
    )
    return Anatomy(
        sex=sex,
        body_half_width=rng.uniform(0.42, 0.47) * frame,
        lung_half_width=(lung_w * rng.uniform(0.97, 1.03), lung_w * rng.uniform(0.95, 1.0)),
        lung_apex_y=rng.uniform(0.11, 0.15),
        dome_y=(rng.uniform(0.69, 0.74), rng.uniform(0.72, 0.77)),
        dome_height=rng.uniform(0.035, 0.06),
        heart_center=(rng.uniform(0.54, 0.58), rng.uniform(0.6, 0.65)),
        heart_axes=(heart_a, heart_a * rng.uniform(0.68, 0.78)),
        heart_angle_deg=rng.uniform(18, 32),
        rib_spacing=rng.uniform(0.058, 0.066),
        rib_start_y=rng.uniform(0.11, 0.14),
        bone_density=rng.uniform(0.8, 1.1),
        soft_density=rng.uniform(0.9, 1.15),
        granulomas=granulomas,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_pose(rng: np.random.Generator, view: str = "PA", domain: float = 0.0) -> Pose:
    """Draw the placement and exposure of one radiograph.

    Args:
        rng: the patient's anatomy/noise generator.
        view: ``"AP"`` magnifies the heart a little, as bedside films do.
        domain: 0 for the internal site; 1 shifts exposure and noise like another hospital's
            equipment would.

    Returns:
        The pose.
    """
    return Pose(
        dx=rng.uniform(-0.035, 0.035),
        dy=rng.uniform(-0.03, 0.03),
        angle_deg=float(np.clip(rng.normal(0, 1.8), -4.5, 4.5)),
        scale=rng.uniform(0.92, 1.06),
        exposure=rng.uniform(0.85, 1.2) * (1 - 0.12 * domain),
        gamma=rng.uniform(0.8, 1.25),
        noise=rng.uniform(0.008, 0.018) * (1 + 0.6 * domain),
        heel=rng.uniform(-0.06, 0.06),
        heart_magnification=rng.uniform(1.06, 1.14) if view == "AP" else 1.0,
    )


def sample_plaques(rng: np.random.Generator, cac: float, scale: float = 1.0) -> list[Plaque]:
    """Calcifications whose number and size grow with log CAC (none for a CAC of 0).

    Args:
        rng: the patient's plaque generator (separate from the anatomy's).
        cac: the Agatston score.
        scale: factor on every plaque's length and width (1: the standard cohort).

    Returns:
        The plaques (empty when ``cac <= 0``).
    """
    if not cac > 0:
        return []
    burden = math.log10(cac + 1.0)  # 0.3 for CAC 1, 2 for 100, 3.7 for 5000
    n = max(1, int(round(3.0 * burden + rng.normal(0, 0.7))))
    plaques = []
    for _ in range(n):
        plaques.append(
            Plaque(
                vessel=int(rng.choice(3, p=_VESSEL_WEIGHTS)),
                t=float(rng.beta(1.6, 2.4)),
                length=float((0.0075 + 0.0085 * burden) * rng.uniform(0.5, 1.5) * scale),
                width=float((0.005 + 0.0022 * burden) * rng.uniform(0.8, 1.25) * scale),
                # denser for heavy calcification; tuned so that a small CNN needs several epochs
                density=float(rng.uniform(0.45, 0.8) * (0.8 + 0.15 * burden)),
            )
        )
    return plaques


# --- geometry helpers -------------------------------------------------------------------------


def _pose_transform(pose: Pose, size_px: float) -> np.ndarray:
    """3x3 matrix: normalised anatomy coordinates -> pixel coordinates for this pose."""
    a = math.radians(pose.angle_deg)
    c, s = math.cos(a) * pose.scale, math.sin(a) * pose.scale
    centre = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    back = np.array([[1, 0, 0.5 + pose.dx], [0, 1, 0.5 + pose.dy], [0, 0, 1]])
    to_px = np.diag([size_px, size_px, 1.0])
    return to_px @ back @ rot @ centre


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def _fixed(pts_px: np.ndarray) -> np.ndarray:
    """Pixel coordinates (pixel centres at integers) as OpenCV fixed-point int32 points."""
    return np.round((pts_px - 0.5) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _fill(canvas: np.ndarray, m: np.ndarray, pts: np.ndarray, value: float) -> None:
    cv2.fillPoly(canvas, [_fixed(_apply(m, pts))], float(value), lineType=cv2.LINE_AA, shift=_SHIFT)


def _line(canvas: np.ndarray, m: np.ndarray, pts: np.ndarray, value: float, width_px: float) -> None:
    thickness = max(1, int(round(width_px)))
    cv2.polylines(
        canvas, [_fixed(_apply(m, pts))], False, float(value), thickness, lineType=cv2.LINE_AA, shift=_SHIFT
    )


def _ellipse(center, axes, angle_deg: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    a = math.radians(angle_deg)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack(
        [center[0] + x * math.cos(a) - y * math.sin(a), center[1] + x * math.sin(a) + y * math.cos(a)], 1
    )


def _bezier(ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[:, None]
    return (
        (1 - t) ** 3 * ctrl[0]
        + 3 * (1 - t) ** 2 * t * ctrl[1]
        + 3 * (1 - t) * t**2 * ctrl[2]
        + t**3 * ctrl[3]
    )


def _heart_frame(anat: Anatomy, pose: Pose) -> tuple[np.ndarray, tuple[float, float]]:
    """Heart-local (u, v) -> normalised coordinates, as a 3x3 matrix; and the heart's axes."""
    a, b = anat.heart_axes[0] * pose.heart_magnification, anat.heart_axes[1] * pose.heart_magnification
    ang = math.radians(anat.heart_angle_deg)
    cx, cy = anat.heart_center
    m = np.array(
        [[a * math.cos(ang), -b * math.sin(ang), cx], [a * math.sin(ang), b * math.cos(ang), cy], [0, 0, 1]]
    )
    return m, (a, b)


def _lung_outline(anat: Anatomy, side: int) -> np.ndarray:
    """Closed lung outline; side -1 is the image's left (the patient's right lung)."""
    i = 0 if side < 0 else 1
    w = anat.lung_half_width[i]
    dome = anat.dome_y[i]
    t = np.linspace(0, 1, 40)
    # lateral border: from the apex out and down to the costophrenic angle
    lat_x = 0.5 + side * (0.1 + (w - 0.1) * np.sin(np.pi / 2 * np.minimum(1, t * 1.25)) ** 0.6)
    lat_y = anat.lung_apex_y + (dome + 0.035 - anat.lung_apex_y) * t
    # base: the diaphragm dome, from the costophrenic angle to the cardiophrenic angle
    u = np.linspace(0, 1, 30)
    medial_base = 0.5 + side * 0.055
    base_x = lat_x[-1] + (medial_base - lat_x[-1]) * u
    base_y = dome + 0.035 * (1 - u) + 0.01 * u - anat.dome_height * np.sin(np.pi * np.clip(u * 1.1, 0, 1))
    # medial border: along the mediastinum back to the apex
    v = np.linspace(1, 0, 30)
    med_x = 0.5 + side * (0.055 + 0.012 * np.sin(np.pi * v))
    med_y = anat.lung_apex_y + 0.03 + (base_y[-1] - anat.lung_apex_y - 0.03) * v
    return np.concatenate(
        [np.stack([lat_x, lat_y], 1), np.stack([base_x, base_y], 1), np.stack([med_x, med_y], 1)]
    )


def _body_outline(anat: Anatomy) -> np.ndarray:
    """Neck, sloping shoulders and chest wall as one closed outline (open below the image)."""
    w = anat.body_half_width
    half = np.array(
        [
            (0.43, -0.1),
            (0.425, 0.08),
            (0.39, 0.12),
            (0.5 - w + 0.08, 0.15),
            (0.5 - w - 0.01, 0.19),
            (0.5 - w - 0.04, 0.25),
            (0.5 - w - 0.03, 0.4),
            (0.5 - w - 0.01, 0.6),
            (0.5 - w + 0.01, 0.85),
            (0.5 - w + 0.03, 1.2),
        ]
    )
    mirrored = np.stack([1 - half[::-1, 0], half[::-1, 1]], 1)
    return np.concatenate([half, mirrored])


# --- rendering ----------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field_ = rng.standard_normal(shape).astype(np.float32)
    field_ = cv2.GaussianBlur(field_, (0, 0), sigma)
    return field_ / (field_.std() + 1e-6)


def _soft_layers(anat: Anatomy, pose: Pose, res: int, rng: np.random.Generator) -> np.ndarray:
    """Soft-tissue attenuation (body, lungs, heart, mediastinum) at ``res`` x ``res``."""
    m = _pose_transform(pose, res)
    body = np.zeros((res, res), np.float32)
    _fill(body, m, _body_outline(anat), 1.0)
    body = cv2.GaussianBlur(body, (0, 0), res * 0.004)
    # thickness: a cylinder seen from the front is thinner at its edges
    yy, xx = np.mgrid[0:res, 0:res].astype(np.float32) + 0.5
    inv = np.linalg.inv(m)
    nx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
    thick = np.sqrt(np.clip(1 - ((nx - 0.5) / (anat.body_half_width + 0.04)) ** 2, 0.05, 1))
    soft = body * thick * 1.1 * anat.soft_density

    organs = np.zeros_like(body)
    media = np.array([(0.44, 0.08), (0.56, 0.08), (0.57, 0.3), (0.58, 0.55), (0.43, 0.55), (0.43, 0.3)])
    _fill(organs, m, media, 1.0)
    _fill(organs, m, _ellipse((0.575, 0.32), (0.035, 0.03), 0), 1.0)  # aortic knob
    _, (ha, hb) = _heart_frame(anat, pose)
    _fill(organs, m, _ellipse(anat.heart_center, (ha, hb), anat.heart_angle_deg), 1.0)
    organs = cv2.GaussianBlur(organs, (0, 0), res * 0.006)

    lungs = np.zeros_like(body)
    for side in (-1, 1):
        _fill(lungs, m, _lung_outline(anat, side), 1.0)
    lungs = cv2.GaussianBlur(lungs, (0, 0), res * 0.005)
    markings = 0.5 + 0.5 * _smooth_noise(rng, (res, res), res * 0.012)
    markings += 0.35 * _smooth_noise(rng, (res, res), res * 0.004)
    # vessels fan out from the hila: lung markings are denser medially
    hilum = np.exp(-(((nx - 0.5) / 0.22) ** 2))
    # heart and mediastinum displace the air of the lungs behind them
    air = lungs * (1 - 0.85 * organs)
    soft -= air * thick * (0.95 - 0.12 * markings - 0.18 * hilum)
    soft += 0.12 * organs

    trachea = np.zeros_like(body)
    _fill(trachea, m, np.array([(0.485, 0.0), (0.515, 0.0), (0.515, 0.3), (0.485, 0.3)]), 1.0)
    trachea = cv2.GaussianBlur(trachea, (0, 0), res * 0.004)
    gas = np.zeros_like(body)
    _fill(gas, m, _ellipse((0.63, anat.dome_y[1] + 0.055), (0.05, 0.025), 0), 1.0)
    gas = cv2.GaussianBlur(gas, (0, 0), res * 0.006)
    soft -= 0.3 * trachea + 0.4 * gas
    if anat.sex == "F":
        breasts = np.zeros_like(body)
        for s in (-1, 1):
            _fill(breasts, m, _ellipse((0.5 + s * 0.24, 0.74), (0.15, 0.11), 0), 1.0)
        soft += 0.25 * cv2.GaussianBlur(breasts, (0, 0), res * 0.03)
    return np.maximum(soft, 0) * body


def _bones(anat: Anatomy, pose: Pose, size: int) -> np.ndarray:
    """Spine, ribs, clavicles and humeral heads at full resolution."""
    m = _pose_transform(pose, size)
    bone = np.zeros((size, size), np.float32)
    px = size * pose.scale
    # spine: a column of vertebral bodies separated by darker discs
    spine = np.array([(0.468, -0.05), (0.532, -0.05), (0.532, 1.05), (0.468, 1.05)])
    _fill(bone, m, spine, 0.24)
    for k in range(24):
        y = -0.02 + k * 0.045
        _line(bone, m, np.array([(0.47, y), (0.53, y)]), -0.045, 0.008 * px)
    for side in (-1, 1):
        w = anat.lung_half_width[0 if side < 0 else 1]
        for k in range(10):
            y0 = anat.rib_start_y + k * anat.rib_spacing
            t = np.linspace(0, 1, 24)
            # posterior rib: rises a little from the spine, then sweeps down the lateral wall
            post = np.stack(
                [0.5 + side * (0.035 + (w + 0.035) * t), y0 - 0.03 * np.sin(np.pi * t * 0.8) + 0.12 * t**2.5],
                1,
            )
            width = (0.015 + 0.004 * k / 9) * px
            _line(bone, m, post, 0.38, width)
            _line(bone, m, post, -0.1, width * 0.5)  # hollow centre: the cortex is denser
            # anterior rib: from the lateral end down and in towards the sternum, fainter
            end = post[-1]
            ant_t = np.linspace(0, 1, 16)[:, None]
            ant = (
                end
                + ant_t * np.array([-side * (w - 0.12), 0.13])
                + np.sin(np.pi * ant_t) * np.array([0, -0.03])
            )
            _line(bone, m, ant, 0.1, width * 0.8)
        # clavicle: a gentle S from the sternum out to the shoulder
        t = np.linspace(0, 1, 24)
        clav = np.stack([0.5 + side * (0.04 + 0.3 * t), 0.205 - 0.075 * t + 0.015 * np.sin(2 * np.pi * t)], 1)
        _line(bone, m, clav, 0.5, 0.02 * px)
        head = _ellipse((0.5 + side * (anat.body_half_width + 0.01), 0.23), (0.055, 0.06), 0)
        _fill(bone, m, head, 0.35)  # humeral head
    for gx, gy, gr in anat.granulomas:  # calcified granulomas: bright specks in the lungs, not CAC
        _fill(bone, m, _ellipse((gx, gy), (gr, gr), 0, 16), 0.9)
    bone = cv2.GaussianBlur(bone, (0, 0), max(0.5, size * 0.0015))
    return np.maximum(bone, 0) * anat.bone_density


def _plaque_layer(anat: Anatomy, pose: Pose, plaques: list[Plaque], size: int) -> np.ndarray:
    layer = np.zeros((size, size), np.float32)
    if not plaques:
        return layer
    m = _pose_transform(pose, size)
    hm, (ha, _) = _heart_frame(anat, pose)
    px = size * pose.scale
    for plaque in plaques:
        ctrl = _CORONARIES[plaque.vessel]
        span = plaque.length / (ha * 2.2)  # vessel parameter covered by the plaque
        t = np.linspace(plaque.t, min(1.0, plaque.t + span), 6)
        local = _bezier(ctrl, t)
        pts = local @ hm[:2, :2].T + hm[:2, 2]
        _line(layer, m, pts, plaque.density, plaque.width * px)
    return layer


@dataclass(frozen=True)
class Radiograph:
    """A rendered frontal image, the same exposure without plaques, and where plaques are."""

    image: np.ndarray  # float32 (size, size) in [0, 1], bone bright
    background: np.ndarray  # the identical exposure and noise without any plaque
    plaque_mask: np.ndarray  # bool (size, size): pixels a plaque was drawn on


def render_frontal(
    anat: Anatomy,
    pose: Pose,
    size: int,
    noise_rng: np.random.Generator,
    plaques: list[Plaque] | None = None,
) -> Radiograph:
    """Render a frontal (PA/AP) chest radiograph.

    Args:
        anat: the patient's anatomy.
        pose: placement and exposure of this radiograph.
        size: output rows and columns.
        noise_rng: generator for lung texture and quantum noise (consumed identically whether or
            not plaques are drawn).
        plaques: calcifications to draw; ``None`` or empty draws none.

    Returns:
        The image, its plaque-free twin and the plaque mask.
    """
    res = min(size, _SOFT_RES)
    soft = _soft_layers(anat, pose, res, noise_rng)
    if res != size:
        soft = cv2.resize(soft, (size, size), interpolation=cv2.INTER_CUBIC)
    atten = soft + _bones(anat, pose, size)
    noise = noise_rng.standard_normal(atten.shape, dtype=np.float32) * np.float32(pose.noise)
    background = _expose(atten, pose, noise)
    layer = _plaque_layer(anat, pose, plaques or [], size)
    mask = layer > 0.02
    if not mask.any():
        return Radiograph(background, background, mask)
    atten += cv2.GaussianBlur(layer, (0, 0), max(0.4, size * 0.0009))
    return Radiograph(_expose(atten, pose, noise), background, mask)


def _expose(atten: np.ndarray, pose: Pose, noise: np.ndarray) -> np.ndarray:
    """Attenuation -> detector image in [0, 1], with the heel effect and the given noise."""
    size = atten.shape[1]
    heel = 1 + pose.heel * np.linspace(-1, 1, size, dtype=np.float32)[None, :]
    image = (1 - np.exp(-pose.exposure * atten * heel)) / (1 - math.exp(-pose.exposure * 2.0))
    image = np.clip(image, 0, 1) ** pose.gamma + noise
    return np.clip(image, 0, 1).astype(np.float32)


def render_lateral(anat: Anatomy, pose: Pose, size: int, noise_rng: np.random.Generator) -> np.ndarray:
    """Render a left-lateral chest view (excluded by ingest; drawn so that it looks like one).

    Args:
        anat: the patient's anatomy.
        pose: placement and exposure.
        size: output rows and columns.
        noise_rng: generator for the noise.

    Returns:
        float32 ``size x size`` in [0, 1], bone bright.
    """
    m = _pose_transform(pose, size)
    px = size * pose.scale
    atten = np.zeros((size, size), np.float32)
    _fill(atten, m, _ellipse((0.5, 0.62), (0.36, 0.6), 0), 1.1 * anat.soft_density)
    lung = np.zeros_like(atten)
    _fill(lung, m, _ellipse((0.52, 0.45), (0.28, 0.3), 0), 0.85)
    heart = np.zeros_like(atten)
    _fill(heart, m, _ellipse((0.38, 0.58), (0.15, 0.13), -20), 0.55)
    atten += heart - lung
    atten = cv2.GaussianBlur(atten, (0, 0), size * 0.008)
    bone = np.zeros_like(atten)
    for k in range(14):  # thoracic vertebrae along the back (image right)
        y = 0.12 + k * 0.06
        _fill(bone, m, np.array([(0.72, y), (0.8, y + 0.005), (0.8, y + 0.045), (0.72, y + 0.04)]), 0.7)
    _line(bone, m, np.array([(0.22, 0.25), (0.2, 0.6)]), 0.6, 0.015 * px)  # sternum
    atten += cv2.GaussianBlur(bone, (0, 0), max(0.5, size * 0.0015)) * anat.bone_density
    noise = noise_rng.standard_normal(atten.shape, dtype=np.float32) * np.float32(pose.noise)
    return _expose(atten, pose, noise)


def render_ct_slice(size: int, z: float, rng: np.random.Generator) -> np.ndarray:
    """An axial chest CT slice in Hounsfield units (for the ``ct/`` folders ingest must skip).

    Args:
        size: rows and columns.
        z: position between the lung apex (0) and base (1); the heart grows with it.
        rng: generator for the noise.

    Returns:
        int16 ``size x size`` Hounsfield units (air -1000, lung about -850, soft tissue about 40).
    """
    hu = np.full((size, size), -1000, np.float32)
    c = size / 2
    cv2.ellipse(hu, (int(c), int(c)), (int(size * 0.42), int(size * 0.3)), 0, 0, 360, 40, -1)
    for s in (-1, 1):
        cv2.ellipse(
            hu, (int(c + s * size * 0.2), int(c)), (int(size * 0.15), int(size * 0.22)), 0, 0, 360, -850, -1
        )
    r_heart = int(size * (0.06 + 0.1 * z))
    cv2.circle(hu, (int(c + size * 0.05), int(c - size * 0.05)), r_heart, 45, -1)
    cv2.circle(hu, (int(c), int(c + size * 0.22)), int(size * 0.05), 700, -1)  # vertebra
    hu += rng.normal(0, 12, hu.shape).astype(np.float32)
    return np.clip(hu, -1024, 3071).astype(np.int16)
