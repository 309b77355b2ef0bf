"""Procedural rendering of the synthetic ReID images (the drawing part of the synthetic data).

Three kinds of random objects drive the renderer, each drawn from its own
:class:`numpy.random.Generator` so that the output is a pure function of the seeds:

* an :class:`Identity` - what a person looks like wherever they are seen: body build and height,
  skin, hair style and colour, an optional cap, the colours and pattern of the upper and lower
  garments, sleeve and leg length, shoes, an optional bag (backpack, shoulder bag or handbag), and,
  for infrared cameras, a "thermal emissivity" per part plus a body-heat factor;
* a :class:`CameraStyle` - what a camera does to everyone it sees: its scene (background colours,
  texture and clutter; cool, smooth scenes for infrared cameras), illumination gain and colour
  cast, gamma, a vertical light gradient, the scale and position of the detected person in the
  crop, blur, sensor noise, JPEG quality and how often people are occluded or seen from the back;
* the per-image generator - pose (leg spread, arm swing), front/back view, mirror flip, shift and
  scale jitter, brightness jitter, the crop window of the scene and the occluder.

Drawing is done on a canvas twice the output size holding a *label map* (which body part covers
each pixel), which is then painted, shaded, downsampled with area interpolation (anti-aliasing),
lit, blurred and corrupted with noise. Infrared images paint the same geometry with per-part
temperatures instead of colours over a cool scene, so they are a different rendering of the same
person, not a grey copy of a visible image.

``domain`` selects the family of camera styles: domain 0 (warm/neutral daylight indoor, street,
park and corridor scenes) or domain 1 (night streets, snow and fluorescent-lit stations with cold
colour casts, darker exposures, smaller people, more blur and noise) for cross-domain experiments.
"""
import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

# Label-map values of the body parts (0 is the scene).
SKIN, HAIR, UPPER, LOWER, SHOES, BAG, HAT, OCCLUDER = 1, 2, 3, 4, 5, 6, 7, 8
_NUM_LABELS = 9

UPPER_PATTERNS = ("solid", "horizontal_stripes", "vertical_stripes", "two_tone", "logo",
                  "checks", "open_jacket")
LOWER_STYLES = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bald")
BAG_TYPES = ("none", "backpack", "shoulder_bag", "handbag")
DOMAINS = (0, 1)

_SUPERSAMPLING = 2
_FIXED_POINT_SHIFT = 4  # cv2 drawing with 1/16 pixel precision
_FIXED_POINT_SCALE = 1 << _FIXED_POINT_SHIFT


def make_rng(*keys):
    """A numpy Generator seeded by a tuple of non-negative integers (order matters)."""
    return np.random.default_rng(np.random.SeedSequence([int(key) for key in keys]))


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------

def _hsv(hue, saturation, value):
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float32)


def _luminance(rgb):
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _garment_colour(rng):
    """A clothing colour: a neutral (black, white, grey, navy, beige) or a saturated colour."""
    if rng.random() < 0.35:
        neutrals = ((0.08, 0.08, 0.09), (0.92, 0.92, 0.9), (0.5, 0.5, 0.52), (0.12, 0.15, 0.35),
                    (0.78, 0.7, 0.55), (0.28, 0.28, 0.3), (0.35, 0.22, 0.12))
        base = np.array(neutrals[rng.integers(len(neutrals))], dtype=np.float32)
        return np.clip(base + rng.normal(0.0, 0.03, 3), 0.0, 1.0).astype(np.float32)
    return _hsv(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.3, 0.95))


def _contrasting_colour(rng, colour):
    """A second garment colour clearly different from ``colour``."""
    for _ in range(20):
        other = _garment_colour(rng)
        if np.abs(other - colour).sum() > 0.6:
            return other
    return (1.0 - colour).astype(np.float32)


def _emissivity(rng, colour):
    """Infrared brightness of a fabric: partly its own, partly darker dyes absorb more heat."""
    return float(np.clip(0.25 + 0.3 * rng.random() + 0.35 * (1.0 - _luminance(colour)), 0.2, 0.95))


@dataclass
class Identity:
    """Appearance of one person, the same in every camera (see the module docstring)."""

    build: float          # body width factor
    height: float         # body height factor
    head_width: float
    skin: np.ndarray
    hair_style: str
    hair: np.ndarray
    hat: np.ndarray       # None when no cap
    upper_pattern: str
    upper: np.ndarray
    upper_second: np.ndarray
    stripe_period: float  # in person heights
    long_sleeves: bool
    lower_style: str
    lower: np.ndarray
    shoes: np.ndarray
    bag_type: str
    bag: np.ndarray
    bag_side: int         # -1 left, +1 right (in the unflipped front view)
    # infrared rendering
    body_heat: float
    thermal_hair: float
    thermal_upper: float
    thermal_upper_second: float
    thermal_lower: float
    thermal_shoes: float
    thermal_bag: float


def sample_identity(rng):
    """Draw the appearance of one person from ``rng`` (a numpy Generator)."""
    skin = _hsv(rng.uniform(0.02, 0.1), rng.uniform(0.25, 0.6), rng.uniform(0.35, 0.95))
    hair_style = HAIR_STYLES[rng.choice(3, p=(0.55, 0.37, 0.08))]
    if rng.random() < 0.75:
        hair = _hsv(rng.uniform(0.02, 0.12), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.45))
    else:  # blond, grey or dyed
        hair = (_hsv(rng.uniform(0.1, 0.15), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.9))
                if rng.random() < 0.6 else _garment_colour(rng))
    hat = _garment_colour(rng) if rng.random() < 0.15 else None
    upper = _garment_colour(rng)
    upper_pattern = UPPER_PATTERNS[rng.choice(len(UPPER_PATTERNS),
                                              p=(0.34, 0.12, 0.08, 0.14, 0.12, 0.06, 0.14))]
    upper_second = _contrasting_colour(rng, upper)
    lower = _garment_colour(rng)
    if rng.random() < 0.5:  # trousers are often dark or blue
        lower = np.array(((0.1, 0.12, 0.3), (0.08, 0.08, 0.08), (0.25, 0.3, 0.5),
                          (0.45, 0.42, 0.38))[rng.integers(4)], dtype=np.float32)
        lower = np.clip(lower + rng.normal(0.0, 0.04, 3), 0.0, 1.0).astype(np.float32)
    lower_style = LOWER_STYLES[rng.choice(3, p=(0.68, 0.2, 0.12))]
    shoes = (_garment_colour(rng) if rng.random() < 0.4
             else np.full(3, rng.uniform(0.05, 0.95), dtype=np.float32))
    bag_type = BAG_TYPES[rng.choice(4, p=(0.45, 0.25, 0.18, 0.12))]
    bag = _garment_colour(rng)
    return Identity(
        build=float(rng.uniform(0.85, 1.2)),
        height=float(rng.uniform(0.92, 1.04)),
        head_width=float(rng.uniform(0.9, 1.1)),
        skin=skin,
        hair_style=hair_style,
        hair=hair,
        hat=hat,
        upper_pattern=upper_pattern,
        upper=upper,
        upper_second=upper_second,
        stripe_period=float(rng.uniform(0.035, 0.08)),
        long_sleeves=bool(rng.random() < 0.6),
        lower_style=lower_style,
        lower=lower,
        shoes=shoes,
        bag_type=bag_type,
        bag=bag,
        bag_side=int(rng.choice((-1, 1))),
        body_heat=float(rng.uniform(0.88, 1.05)),
        thermal_hair=float(rng.uniform(0.4, 0.6)),
        thermal_upper=_emissivity(rng, upper),
        thermal_upper_second=_emissivity(rng, upper_second),
        thermal_lower=_emissivity(rng, lower),
        thermal_shoes=float(rng.uniform(0.25, 0.45)),
        thermal_bag=float(rng.uniform(0.15, 0.4)),
    )


# --------------------------------------------------------------------------------------------
# Cameras and scenes
# --------------------------------------------------------------------------------------------

@dataclass
class CameraStyle:
    """Nuisance of one camera (see the module docstring). ``scene`` is float32 (H, W, 3)."""

    infrared: bool
    scene: np.ndarray
    gain: float
    cast: np.ndarray
    gamma: float
    light_gradient: float   # brightness difference between bottom and top of the crop
    scale: float            # person height / crop height
    scale_jitter: float
    x_offset: float         # horizontal offset of the person, in crop widths
    y_offset: float         # vertical offset, in crop heights
    blur_sigma: float       # in output pixels
    noise_sigma: float      # in 0..1 intensity units
    jpeg_quality: int
    occlusion_probability: float
    back_view_probability: float
    thermal_offset: float   # infrared: intensity added to the person (camera calibration)
    thermal_contrast: float  # infrared: gain applied to the person's temperature


_SCENE_KINDS = {0: ("indoor", "street", "park", "corridor"), 1: ("night", "snow", "station")}


def _low_frequency_noise(rng, height, width, cells):
    """Smooth random field in roughly [-1, 1], ``cells`` random values across the width."""
    cells_y = max(2, int(round(cells * height / width)))
    field = rng.normal(0.0, 1.0, (cells_y, cells)).astype(np.float32)
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC) / 1.5


def _palette_colour(rng, domain, kind):
    if domain == 0:
        if kind == "park":
            return _hsv(rng.uniform(0.18, 0.4), rng.uniform(0.3, 0.75), rng.uniform(0.25, 0.75))
        return _hsv(rng.uniform(0.0, 0.16), rng.uniform(0.05, 0.55), rng.uniform(0.35, 0.9))
    if kind == "snow":
        return _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.15), rng.uniform(0.75, 1.0))
    if kind == "night":
        return _hsv(rng.uniform(0.55, 0.8), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.35))
    return _hsv(rng.uniform(0.3, 0.5), rng.uniform(0.1, 0.45), rng.uniform(0.3, 0.75))


def _render_scene(rng, domain, height, width):
    """A float32 (height, width, 3) background scene of one camera."""
    kind = _SCENE_KINDS[domain][rng.integers(len(_SCENE_KINDS[domain]))]
    top = _palette_colour(rng, domain, kind)
    middle = _palette_colour(rng, domain, kind)
    floor = _palette_colour(rng, domain, kind) * rng.uniform(0.6, 1.0)
    horizon = int(height * rng.uniform(0.55, 0.85))
    rows = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    scene = np.empty((height, width, 3), np.float32)
    scene[:horizon] = top * (1.0 - rows) + middle * rows
    depth = np.linspace(0.0, 1.0, height - horizon, dtype=np.float32)[:, None, None]
    scene[horizon:] = floor * (0.8 + 0.35 * depth)
    # Clutter: windows, doors, posters, shelves, bushes, lamps.
    count = int(rng.integers(4, 16))
    for _ in range(count):
        colour = _palette_colour(rng, domain, kind)
        if kind in ("street", "station", "night") and rng.random() < 0.4:
            colour = _garment_colour(rng) * (0.5 if kind == "night" else 1.0)
        x0 = int(rng.integers(0, width))
        y0 = int(rng.integers(0, max(1, horizon)))
        w = int(rng.integers(width // 40 + 2, width // 6 + 4))
        h = int(rng.integers(height // 12 + 2, height // 2 + 4))
        if kind in ("park",) and rng.random() < 0.7:
            cv2.ellipse(scene, (x0, y0 + h // 2), (w, h // 2), 0.0, 0.0, 360.0,
                        tuple(float(c) for c in colour), -1)
        elif kind == "night" and rng.random() < 0.35:  # lamps
            cv2.circle(scene, (x0, y0), int(rng.integers(3, 10)), (1.0, 0.9, 0.6), -1)
        else:
            cv2.rectangle(scene, (x0, y0), (x0 + w, min(horizon, y0 + h)),
                          tuple(float(c) for c in colour), -1)
    if kind in ("corridor", "station"):  # regular vertical structure (doors, pillars)
        period = int(rng.integers(width // 16, width // 6))
        band = max(2, period // int(rng.integers(3, 6)))
        shade = float(rng.uniform(0.55, 0.85))
        for x in range(int(rng.integers(0, period)), width, period):
            scene[:horizon, x:x + band] *= shade
    if kind in ("indoor", "station", "street"):  # floor tiles or road markings
        period = int(rng.integers(6, 20))
        scene[horizon::period] *= float(rng.uniform(0.6, 0.9))
    texture = float(rng.uniform(0.04, 0.14)) * _low_frequency_noise(
        rng, height, width, int(rng.integers(8, 40)))
    scene += texture[..., None] * np.array((1.0, 0.97, 0.94), np.float32)
    grain = rng.normal(0.0, float(rng.uniform(0.0, 0.05)), (height, width, 1)).astype(np.float32)
    scene += grain
    return np.clip(scene, 0.0, 1.0)


def _render_thermal_scene(rng, height, width, paired_scene=None):
    """A cool, smooth infrared scene; from the structure of ``paired_scene`` when given."""
    base = float(rng.uniform(0.12, 0.35))
    if paired_scene is not None:
        grey = cv2.resize(paired_scene, (width, height), interpolation=cv2.INTER_AREA)
        grey = grey @ np.array((0.299, 0.587, 0.114), np.float32)
        structure = (grey - grey.mean()) * float(rng.uniform(0.25, 0.5))
    else:
        structure = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(3, 10))):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            w, h = int(rng.integers(4, width // 5 + 5)), int(rng.integers(8, height // 2 + 9))
            cv2.rectangle(structure, (x0, y0), (x0 + w, y0 + h),
                          float(rng.uniform(-0.12, 0.12)), -1)
    gradient = np.linspace(float(rng.uniform(-0.08, 0.08)), 0.0, height, dtype=np.float32)
    scene = base + structure + gradient[:, None]
    scene += float(rng.uniform(0.03, 0.1)) * _low_frequency_noise(rng, height, width,
                                                                  int(rng.integers(4, 16)))
    # A few warm objects (radiators, lamps, engines).
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(3, 14)), y0 + int(rng.integers(3, 14))
        cv2.rectangle(scene, (x0, y0), (x1, y1), float(rng.uniform(0.5, 0.8)), -1)
    scene = np.clip(scene, 0.0, 1.0)
    return np.repeat(scene[..., None], 3, axis=2)


def sample_camera_style(rng, image_size, domain=0, infrared=False, paired_scene=None):
    """Draw one camera's nuisance parameters and render its scene.

    Args:
      rng: numpy Generator.
      image_size: (height, width) of the output crops.
      domain: 0 or 1 (two families of camera styles, see the module docstring).
      infrared: a thermal camera (cool scene, temperature rendering).
      paired_scene: for infrared cameras, the scene of a co-located visible camera whose
        structure the thermal scene reuses (e.g. SYSU-MM01 cameras 2 and 3 share a room).
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}.")
    height, width = image_size
    scene_height = int(round(height * _SUPERSAMPLING * 1.2))
    scene_width = width * _SUPERSAMPLING * 4
    if infrared:
        scene = _render_thermal_scene(rng, scene_height, scene_width, paired_scene)
        cast = np.ones(3, np.float32)
        gain = float(rng.uniform(0.85, 1.15))
        gamma = float(rng.uniform(0.85, 1.2))
        blur = float(rng.uniform(0.5, 1.3))
        noise = float(rng.uniform(0.02, 0.05))
    else:
        scene = _render_scene(rng, domain, scene_height, scene_width)
        if domain == 0:
            gain = float(rng.uniform(0.6, 1.3))
            cast = np.array((rng.uniform(0.95, 1.25), rng.uniform(0.85, 1.1),
                             rng.uniform(0.7, 1.05)), np.float32)
            gamma = float(rng.uniform(0.8, 1.25))
            blur = float(rng.uniform(0.0, 1.0))
            noise = float(rng.uniform(0.005, 0.03))
        else:
            gain = float(rng.uniform(0.45, 1.0))
            cast = np.array((rng.uniform(0.65, 0.95), rng.uniform(0.85, 1.2),
                             rng.uniform(1.05, 1.4)), np.float32)
            gamma = float(rng.uniform(1.0, 1.5))
            blur = float(rng.uniform(0.6, 1.6))
            noise = float(rng.uniform(0.025, 0.06))
    if domain == 0:
        scale = float(rng.uniform(0.78, 0.97))
        jpeg_quality = int(rng.integers(80, 96))
    else:
        scale = float(rng.uniform(0.62, 0.84))
        jpeg_quality = int(rng.integers(65, 85))
    return CameraStyle(
        infrared=bool(infrared),
        scene=scene.astype(np.float32),
        gain=gain,
        cast=cast / max(1e-6, float(cast.mean())) if not infrared else cast,
        gamma=gamma,
        light_gradient=float(rng.uniform(-0.25, 0.25)),
        scale=scale,
        scale_jitter=float(rng.uniform(0.02, 0.06)),
        x_offset=float(rng.uniform(-0.1, 0.1)),
        y_offset=float(rng.uniform(-0.04, 0.04)),
        blur_sigma=blur,
        noise_sigma=noise,
        jpeg_quality=jpeg_quality,
        occlusion_probability=float(rng.choice((0.0, 0.08, 0.2, 0.35))),
        back_view_probability=float(rng.uniform(0.1, 0.7)),
        thermal_offset=float(rng.uniform(-0.08, 0.08)),
        thermal_contrast=float(rng.uniform(0.8, 1.1)),
    )


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------

class _Canvas:
    """A label map with helpers that draw body parts given in person coordinates.

    Person coordinates: x in person heights from the body axis (positive to the image right),
    y in person heights from the top of the head.
    """

    def __init__(self, height, width, centre_x, top, person_height, flip):
        self.labels = np.zeros((height, width), np.uint8)
        self.centre_x = centre_x
        self.top = top
        self.person_height = person_height
        self.flip = -1.0 if flip else 1.0

    def _points(self, points):
        array = np.array(points, np.float64)
        array[:, 0] = self.centre_x + self.flip * array[:, 0] * self.person_height
        array[:, 1] = self.top + array[:, 1] * self.person_height
        return np.round(array * _FIXED_POINT_SCALE).astype(np.int32)

    def polygon(self, points, label):
        cv2.fillPoly(self.labels, [self._points(points)], int(label), cv2.LINE_8,
                     _FIXED_POINT_SHIFT)

    def limb(self, start, end, start_width, end_width, label):
        """A tapered segment from ``start`` to ``end`` (person coordinates)."""
        (x0, y0), (x1, y1) = start, end
        dx, dy = x1 - x0, y1 - y0
        length = max(1e-6, float(np.hypot(dx, dy)))
        nx, ny = -dy / length, dx / length
        a, b = start_width / 2.0, end_width / 2.0
        self.polygon([(x0 + nx * a, y0 + ny * a), (x1 + nx * b, y1 + ny * b),
                      (x1 - nx * b, y1 - ny * b), (x0 - nx * a, y0 - ny * a)], label)

    def ellipse(self, centre, axes, label, start_angle=0.0, end_angle=360.0):
        (cx, cy), (ax, ay) = centre, axes
        point = self._points([(cx, cy)])[0]
        axes_px = (int(round(ax * self.person_height * _FIXED_POINT_SCALE)),
                   int(round(ay * self.person_height * _FIXED_POINT_SCALE)))
        if self.flip < 0:
            start_angle, end_angle = 180.0 - end_angle, 180.0 - start_angle
        cv2.ellipse(self.labels, (int(point[0]), int(point[1])), axes_px, 0.0, start_angle,
                    end_angle, int(label), -1, cv2.LINE_8, _FIXED_POINT_SHIFT)


def _draw_person(canvas, identity, pose):
    """Draw the label map of ``identity`` in ``pose`` (a dict) onto ``canvas``."""
    build = identity.build
    back = pose["back_view"]
    shoulder = 0.115 * build
    waist = 0.095 * build
    hip = 0.1 * build
    leg_x = 0.048 * build
    spread_left, spread_right = pose["leg_spread"]
    swing_left, swing_right = pose["arm_swing"]
    lower_label = LOWER
    # Long hair behind the head and shoulders.
    if identity.hair_style == "long":
        canvas.polygon([(-0.065, 0.06), (0.065, 0.06), (0.075, 0.24), (-0.075, 0.24)], HAIR)
    # Legs (skin below shorts/skirt), then trousers/shorts over them.
    for side, spread in ((-1.0, spread_left), (1.0, spread_right)):
        hip_joint = (side * leg_x, 0.5)
        ankle = (side * (leg_x + spread), 0.93)
        canvas.limb(hip_joint, ankle, 0.085 * build, 0.055, SKIN)
        if identity.lower_style == "trousers":
            canvas.limb(hip_joint, ankle, 0.088 * build, 0.058, lower_label)
        elif identity.lower_style == "shorts":
            knee = (side * (leg_x + 0.4 * spread), 0.68)
            canvas.limb(hip_joint, knee, 0.09 * build, 0.075, lower_label)
        canvas.polygon([(ankle[0] - 0.035, 0.925), (ankle[0] + 0.035, 0.925),
                        (ankle[0] + 0.04 + side * 0.012, 0.995),
                        (ankle[0] - 0.04 + side * 0.012, 0.995)], SHOES)
    skirt_bottom = 0.72
    if identity.lower_style == "skirt":
        canvas.polygon([(-hip, 0.45), (hip, 0.45), (hip + 0.045, skirt_bottom),
                        (-hip - 0.045, skirt_bottom)], lower_label)
    else:
        canvas.polygon([(-hip, 0.45), (hip, 0.45), (hip, 0.56), (-hip, 0.56)], lower_label)
    # Backpack body seen from the back is drawn over the torso later; from the front only its
    # sides stick out behind the torso.
    if identity.bag_type == "backpack" and not back:
        canvas.polygon([(-shoulder - 0.012, 0.19), (shoulder + 0.012, 0.19),
                        (shoulder + 0.008, 0.42), (-shoulder - 0.008, 0.42)], BAG)
    # Torso and neck.
    canvas.polygon([(-0.022, 0.12), (0.022, 0.12), (0.024, 0.17), (-0.024, 0.17)], SKIN)
    canvas.polygon([(-shoulder, 0.155), (-0.03, 0.145), (0.03, 0.145), (shoulder, 0.155),
                    (shoulder * 0.97, 0.2), (waist, 0.47), (-waist, 0.47),
                    (-shoulder * 0.97, 0.2)], UPPER)
    # Arms: upper arm and forearm, sleeves of the upper garment, skin hands.
    for side, swing in ((-1.0, swing_left), (1.0, swing_right)):
        shoulder_joint = (side * (shoulder - 0.022), 0.175)
        elbow = (side * (shoulder + 0.012) + swing * 0.5, 0.325)
        wrist = (side * (shoulder + 0.018) + swing, 0.47)
        canvas.limb(shoulder_joint, elbow, 0.058 * build, 0.048, SKIN)
        canvas.limb(elbow, wrist, 0.048, 0.04, SKIN)
        if identity.long_sleeves:
            canvas.limb(shoulder_joint, elbow, 0.062 * build, 0.052, UPPER)
            canvas.limb(elbow, wrist, 0.052, 0.044, UPPER)
        else:
            sleeve_end = (shoulder_joint[0] + 0.5 * (elbow[0] - shoulder_joint[0]), 0.25)
            canvas.limb(shoulder_joint, sleeve_end, 0.064 * build, 0.058, UPPER)
        canvas.ellipse((wrist[0], wrist[1] + 0.015), (0.018, 0.024), SKIN)
        if identity.bag_type == "handbag" and side == identity.bag_side:
            canvas.polygon([(wrist[0] - 0.04, 0.5), (wrist[0] + 0.04, 0.5),
                            (wrist[0] + 0.045, 0.6), (wrist[0] - 0.045, 0.6)], BAG)
    # Head, hair, cap.
    head = (0.0, 0.072)
    head_axes = (0.05 * identity.head_width, 0.064)
    canvas.ellipse(head, head_axes, SKIN)
    if identity.hair_style != "bald":
        if back:
            canvas.ellipse(head, (head_axes[0] * 1.06, head_axes[1] * 1.04), HAIR)
        else:
            canvas.ellipse((0.0, 0.068), (head_axes[0] * 1.08, head_axes[1] * 1.06), HAIR,
                           180.0, 360.0)
    if identity.hat is not None:
        canvas.ellipse((0.0, 0.055), (head_axes[0] * 1.12, 0.05), HAT, 180.0, 360.0)
        canvas.polygon([(-0.06, 0.05), (0.08 if not back else 0.06, 0.05),
                        (0.08 if not back else 0.06, 0.06), (-0.06, 0.06)], HAT)
    # Bags over the clothes.
    if identity.bag_type == "backpack":
        if back:
            canvas.polygon([(-0.085 * build, 0.18), (0.085 * build, 0.18),
                            (0.09 * build, 0.44), (-0.09 * build, 0.44)], BAG)
        else:
            for side in (-1.0, 1.0):
                canvas.limb((side * 0.07, 0.15), (side * 0.075 * build, 0.36), 0.02, 0.018, BAG)
    elif identity.bag_type == "shoulder_bag":
        side = identity.bag_side
        canvas.limb((-side * 0.06, 0.15), (side * waist, 0.44), 0.016, 0.016, BAG)
        canvas.polygon([(side * (waist - 0.02), 0.42), (side * (waist + 0.075), 0.42),
                        (side * (waist + 0.08), 0.55), (side * (waist - 0.02), 0.55)], BAG)


def _upper_pattern_mask(identity, back, x, y):
    """True where the upper garment shows its second colour; x, y in person coordinates."""
    pattern = identity.upper_pattern
    period = identity.stripe_period
    if pattern == "horizontal_stripes":
        return np.mod(y / period, 1.0) < 0.5
    if pattern == "vertical_stripes":
        return np.mod(x / (0.6 * period), 1.0) < 0.5
    if pattern == "checks":
        return (np.mod(y / period, 1.0) < 0.5) ^ (np.mod(x / period, 1.0) < 0.5)
    if pattern == "two_tone":
        return y > 0.32
    if pattern == "logo":
        return (not back) & (np.abs(x) < 0.045) & (y > 0.22) & (y < 0.31)
    if pattern == "open_jacket":
        return (not back) & (np.abs(x) < 0.03) & (y > 0.15)
    return np.zeros_like(x, dtype=bool)


def _paint(canvas_image, labels, identity, pose, canvas, camera, rng):
    """Paint the labelled pixels over ``canvas_image``: colours, or temperatures if infrared.

    Garment patterns and a round-body shading (darker at the sides) are functions of the
    person coordinates of each pixel. Returns the painted float32 canvas.
    """
    infrared = camera.infrared
    table = np.zeros((_NUM_LABELS, 3), np.float32)
    if infrared:
        heat = identity.body_heat
        values = {SKIN: 0.93 * heat, HAIR: identity.thermal_hair * heat,
                  UPPER: identity.thermal_upper * heat, LOWER: identity.thermal_lower * heat,
                  SHOES: identity.thermal_shoes, BAG: identity.thermal_bag,
                  HAT: 0.35 * heat, OCCLUDER: pose["occluder_temperature"]}
        for label, value in values.items():
            table[label] = value
        second = np.full(3, identity.thermal_upper_second * heat, np.float32)
        second = 0.5 * second + 0.5 * table[UPPER]  # dyes differ little in emissivity
    else:
        table[SKIN] = identity.skin
        table[HAIR] = identity.hair
        table[UPPER] = identity.upper
        table[LOWER] = identity.lower
        table[SHOES] = identity.shoes
        table[BAG] = identity.bag
        table[HAT] = identity.hat if identity.hat is not None else 0.0
        table[OCCLUDER] = pose["occluder_colour"]
        second = identity.upper_second
    colours = np.take(table, labels, axis=0)
    height, width = labels.shape
    # Person coordinates of the pixel columns (1, W) and rows (H, 1).
    px = (canvas.flip * (np.arange(width, dtype=np.float32) - canvas.centre_x)
          / canvas.person_height)[None, :]
    py = ((np.arange(height, dtype=np.float32) - canvas.top) / canvas.person_height)[:, None]
    if identity.upper_pattern != "solid":
        mask = np.broadcast_to(_upper_pattern_mask(identity, pose["back_view"], px, py),
                               labels.shape)
        colours[mask & (labels == UPPER)] = second
    half_width = 0.13 * identity.build
    strength = 0.12 if infrared else 0.28
    shade = 1.0 - strength * np.clip(np.abs(px) / half_width, 0.0, 1.3) ** 2
    shade = np.where(labels == OCCLUDER, np.float32(1.0), shade.astype(np.float32))
    colours *= shade[..., None]
    if infrared:  # the camera's calibration of temperatures
        colours = np.clip(camera.thermal_contrast * colours + camera.thermal_offset, 0.0, 1.0)
    return np.where((labels > 0)[..., None], colours, canvas_image)


def _occluder(rng, canvas, height, width):
    """Draw a bench/car/passer-by occluder into the label map."""
    labels = canvas.labels
    if rng.random() < 0.55:  # object in front, from the bottom
        top = int(height * rng.uniform(0.55, 0.8))
        x0 = int(width * rng.uniform(-0.3, 0.4))
        x1 = int(x0 + width * rng.uniform(0.5, 1.2))
        cv2.rectangle(labels, (x0, top), (x1, height), OCCLUDER, -1)
    else:  # another pedestrian at a side
        w = int(width * rng.uniform(0.25, 0.42))
        if rng.random() < 0.5:
            cv2.ellipse(labels, (0, int(height * 0.6)), (w, int(height * 0.55)), 0, 0, 360,
                        OCCLUDER, -1)
        else:
            cv2.ellipse(labels, (width, int(height * 0.6)), (w, int(height * 0.55)), 0, 0, 360,
                        OCCLUDER, -1)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

def sample_pose(rng, camera, scale_factor=1.0, shift_factor=1.0):
    """Per-image pose and framing (see :func:`render_image`)."""
    stride = rng.uniform(-0.035, 0.06)
    return {
        "back_view": bool(rng.random() < camera.back_view_probability),
        "flip": bool(rng.random() < 0.5),
        "leg_spread": (float(stride + rng.normal(0.0, 0.01)),
                       float(-0.3 * stride + rng.normal(0.0, 0.01))),
        "arm_swing": (float(rng.normal(0.0, 0.025)), float(rng.normal(0.0, 0.025))),
        "scale": float(camera.scale * scale_factor * (1.0 + rng.normal(0.0, camera.scale_jitter))),
        "x_shift": float(camera.x_offset + shift_factor * rng.normal(0.0, 0.035)),
        "y_shift": float(camera.y_offset + shift_factor * rng.normal(0.0, 0.02)),
        "brightness": float(np.exp(rng.normal(0.0, 0.08))),
        "occluded": bool(rng.random() < camera.occlusion_probability),
        "occluder_colour": _garment_colour(rng) * float(rng.uniform(0.5, 1.0)),
        "occluder_temperature": float(rng.uniform(0.25, 0.85)),
    }


def render_image(identity, camera, rng, image_size, pose=None, draw_person=True):
    """Render one crop of ``identity`` seen by ``camera``.

    Args:
      identity: an :class:`Identity` (ignored when ``draw_person`` is False).
      camera: a :class:`CameraStyle` (its ``infrared`` flag picks the rendering).
      rng: numpy Generator for everything that changes from image to image.
      image_size: (height, width) of the result.
      pose: a dict from :func:`sample_pose`; drawn from ``rng`` when None.
      draw_person: False renders the background only (Market-1501 "junk" boxes).

    Returns:
      (image, info): ``image`` uint8 RGB (height, width, 3); ``info`` a dict with the person
      box ``box`` = (x0, y0, x1, y1) in output pixels (body from head to feet, arms excluded,
      not clipped to the image), ``back_view``, ``flip`` and ``occluded``.
    """
    height, width = image_size
    if pose is None:
        pose = sample_pose(rng, camera)
    big_h, big_w = height * _SUPERSAMPLING, width * _SUPERSAMPLING
    scene = camera.scene
    x0 = int(rng.integers(0, scene.shape[1] - big_w + 1))
    y0 = int(rng.integers(0, scene.shape[0] - big_h + 1))
    canvas_image = scene[y0:y0 + big_h, x0:x0 + big_w]
    person_height = pose["scale"] * big_h * (identity.height if draw_person else 1.0)
    centre_x = big_w * (0.5 + pose["x_shift"])
    top = (big_h - person_height) * 0.5 + pose["y_shift"] * big_h
    canvas = _Canvas(big_h, big_w, centre_x, top, person_height, pose["flip"])
    if draw_person:
        _draw_person(canvas, identity, pose)
    if pose["occluded"]:
        _occluder(rng, canvas, big_h, big_w)
    if canvas.labels.any():
        canvas_image = _paint(canvas_image, canvas.labels, identity, pose, canvas, camera, rng)
    image = cv2.resize(canvas_image, (width, height), interpolation=cv2.INTER_AREA)
    # Illumination: gain, colour cast, gamma, vertical light gradient, brightness jitter.
    rows = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None, None]
    light = camera.gain * pose["brightness"] * (1.0 + camera.light_gradient * rows)
    image = np.clip(image, 0.0, 1.0) ** camera.gamma
    image = image * light * camera.cast
    if camera.blur_sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), camera.blur_sigma)
    noise_shape = (height, width, 1) if camera.infrared else (height, width, 3)
    image = image + rng.normal(0.0, camera.noise_sigma, noise_shape).astype(np.float32)
    if camera.infrared:
        image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    half = 0.13 * identity.build * person_height if draw_person else 0.0
    box = ((centre_x - half) / _SUPERSAMPLING, top / _SUPERSAMPLING,
           (centre_x + half) / _SUPERSAMPLING, (top + person_height) / _SUPERSAMPLING)
    info = {"box": box, "back_view": pose["back_view"], "flip": pose["flip"],
            "occluded": pose["occluded"]}
    return image, info


def encode_jpeg(image, quality):
    """JPEG bytes of a uint8 RGB image (deterministic for a given OpenCV build)."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG image.")
    return buffer.tobytes()
