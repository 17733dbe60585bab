"""A seeded, vectorised synthetic re-id set: cartoon pedestrians seen by differently lit cameras.

Why: the demo, the tests and CI need a data set that is always there, loads in seconds and still asks
a model to learn what re-id needs. Each identity is a combination of body-part colours drawn from a
small shared palette plus textures (plain / stripes / checks), trouser length and maybe a bag, so
identities differ by *which part* wears *which colour*, not by a colour histogram alone. Each camera
applies its own strong colour cast and background; each image adds a mirror view, shift and scale
jitter, a walking pose, background clutter, partial occlusion and noise. An untrained network ranks
mostly by camera look and background; a trained one learns the cast-invariant part layout.

Protocol ("single_shot", no junk rules): identities are split into disjoint train and test people
(``split_seed``); training uses every image of the train people; query = the test people's camera-0
images, gallery = their images from every other camera, so every match is cross-camera.
"""
from __future__ import annotations

import numpy as np

from engine.errors import InputError

from .folders import split_people
from .reidset import ReidSet, make_reid_set

# Clothing palette (RGB in [0, 1]); few colours so identities must be told apart by their layout.
PALETTE = np.array([
    [0.85, 0.12, 0.12], [0.12, 0.25, 0.75], [0.15, 0.6, 0.2], [0.92, 0.85, 0.2], [0.95, 0.95, 0.95],
    [0.1, 0.1, 0.1], [0.5, 0.5, 0.52], [0.55, 0.32, 0.15], [0.6, 0.2, 0.65], [0.95, 0.55, 0.1],
    [0.3, 0.75, 0.85], [0.9, 0.6, 0.7],
], np.float32)
SKIN = np.array([[0.96, 0.8, 0.66], [0.85, 0.65, 0.5], [0.62, 0.44, 0.3], [0.4, 0.27, 0.18]], np.float32)
HAIR = np.array([[0.08, 0.06, 0.05], [0.35, 0.22, 0.1], [0.8, 0.65, 0.35], [0.55, 0.55, 0.55]], np.float32)
CHUNK = 256  # images rendered per vectorised pass: bounds memory to ~100 MB at 160x64


def _identities(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-identity appearance: colours (palette + small jitter), textures, build and accessories."""
    def colour(table: np.ndarray, jitter: float = 0.05) -> np.ndarray:
        picks = table[rng.integers(0, len(table), n)]
        return np.clip(picks + rng.normal(0, jitter, picks.shape), 0, 1).astype(np.float32)

    return {
        "skin": colour(SKIN, 0.03), "hair": colour(HAIR, 0.03),
        "top_a": colour(PALETTE), "top_b": colour(PALETTE), "legs_a": colour(PALETTE),
        "legs_b": colour(PALETTE), "shoes": colour(PALETTE), "bag_col": colour(PALETTE),
        "top_tex": rng.integers(0, 4, n), "legs_tex": rng.integers(0, 3, n),  # plain/h/v(/checks)
        "top_period": rng.uniform(0.03, 0.08, n), "legs_period": rng.uniform(0.04, 0.1, n),
        "shorts": rng.random(n) < 0.25, "bag": rng.random(n) < 0.4, "bag_side": rng.choice([-1, 1], n),
        "build": rng.uniform(0.85, 1.15, n), "waist": rng.uniform(0.46, 0.56, n),
    }


def _cameras(rng: np.random.Generator, cams: int) -> dict[str, np.ndarray]:
    """Per-camera look: a strong per-channel gain (colour cast), offset, gamma and background colour."""
    return {"gain": rng.uniform(0.55, 1.35, (cams, 3)), "offset": rng.uniform(-0.08, 0.12, (cams, 3)),
            "gamma": rng.uniform(0.7, 1.4, cams), "bg": rng.uniform(0.2, 0.8, (cams, 3))}


def _views(rng: np.random.Generator, n: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Per-image viewpoint, pose, clutter and occlusion."""
    ph = height * rng.uniform(0.78, 0.96, n)
    view = {
        "mirror": rng.choice([-1.0, 1.0], n), "ph": ph, "top": rng.uniform(0.0, 1.0, n) * (height - ph),
        "cx": width / 2 + rng.uniform(-0.09, 0.09, n) * width, "gap": rng.uniform(0.02, 0.22, n),
        "bright": rng.uniform(0.8, 1.2, n), "clutter": rng.random((n, 5, 4)),
        "clutter_col": rng.random((n, 5, 3)), "occlude": rng.random(n) < 0.3,
        "occ_box": rng.random((n, 4)), "occ_col": rng.random((n, 3)), "phase": rng.random((n, 2)),
    }
    # float32 keeps every per-pixel array of the renderer at half the memory traffic
    return {k: a.astype(np.float32) if a.dtype == np.float64 else a for k, a in view.items()}


def _boxes(y: np.ndarray, x: np.ndarray, box: np.ndarray, height: int, width: int,
           min_size: float, max_size: float) -> np.ndarray:
    """Masks of axis-aligned boxes; ``box`` (..., 4) holds uniform numbers for (y, x, h, w)."""
    h = (min_size + box[..., 2] * (max_size - min_size)) * height
    w = (min_size + box[..., 3] * (max_size - min_size)) * width
    y0, x0 = box[..., 0] * (height - h), box[..., 1] * (width - w)
    e = (...,) + (None, None)
    return (y >= y0[e]) & (y < (y0 + h)[e]) & (x >= x0[e]) & (x < (x0 + w)[e])


def _texture(kind: np.ndarray, period: np.ndarray, phase: np.ndarray, v: np.ndarray,
             u: np.ndarray) -> np.ndarray:
    """1 where the second colour shows: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks."""
    e = (slice(None), None, None)
    hs = np.floor(v / period[e] + phase[:, 0][e]) % 2
    vs = np.floor((u + 2.0) * 0.18 / period[e] + phase[:, 1][e]) % 2
    k = kind[e]
    return np.where(k == 1, hs, np.where(k == 2, vs, np.where(k == 3, (hs + vs) % 2, 0.0)))


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, colour_b: np.ndarray | None = None,
           second: np.ndarray | None = None) -> None:
    """Draw per-image ``colour`` (n, 3) where ``mask`` (n, H, W) is set, in place.

    With ``second`` (n, H, W of 0/1) the pixels where it is 1 get ``colour_b`` instead (a texture).
    Only masked pixels are touched, which keeps rendering cost proportional to the painted area.
    """
    where = np.nonzero(mask)
    values = colour[where[0]]
    if colour_b is not None and second is not None:
        pick = second[where][:, None]
        values = values * (1 - pick) + colour_b[where[0]] * pick
    img[where] = values


def _draw_person(img: np.ndarray, ids: dict[str, np.ndarray], view: dict[str, np.ndarray],
                 y: np.ndarray, x: np.ndarray) -> None:
    """Paint head, textured top, legs, shoes and bag in person-relative coordinates, in place."""
    e = (slice(None), None, None)
    v = (y - view["top"][e]) / view["ph"][e]                       # 0 at the head top, 1 at the feet
    half = view["ph"] * 0.18 * ids["build"]
    u = (x - view["cx"][e]) / half[e] * view["mirror"][e]          # -1..1 across the shoulders
    head = ((v - 0.075) / 0.075) ** 2 + (u / 0.42) ** 2 < 1
    _paint(img, head, ids["skin"])
    _paint(img, head & (v < 0.055), ids["hair"])
    waist, gap, au = ids["waist"][e], view["gap"][e], np.abs(u)
    for part, region in (("top", (v >= 0.15) & (v < waist) & (au < 1.0 - 0.15 * (v - 0.15))),
                         ("legs", (v >= waist) & (v < 0.93) & (au > gap) & (au < 0.75))):
        second = _texture(ids[f"{part}_tex"], ids[f"{part}_period"], view["phase"], v, u)
        _paint(img, region, ids[f"{part}_a"], ids[f"{part}_b"], second)
    _paint(img, ids["shorts"][e] & (v > waist + 0.2) & (v < 0.93) & (au > gap) & (au < 0.75), ids["skin"])
    _paint(img, (v >= 0.93) & (v < 1.0) & (au > gap) & (au < 0.85), ids["shoes"])
    bag_u = u * ids["bag_side"][e]
    _paint(img, ids["bag"][e] & (bag_u > 0.95) & (bag_u < 1.5) & (v > 0.32) & (v < 0.56), ids["bag_col"])


def _render(ids: dict[str, np.ndarray], cam: dict[str, np.ndarray], view: dict[str, np.ndarray],
            cam_idx: np.ndarray, noise: np.ndarray, height: int, width: int) -> np.ndarray:
    """Render one chunk of images (all inputs already indexed per image) to uint8 (n, H, W, 3)."""
    y = np.arange(height, dtype=np.float32)[None, :, None]
    x = np.arange(width, dtype=np.float32)[None, None, :]
    img = np.empty((len(cam_idx), height, width, 3), np.float32)
    img[:] = cam["bg"][cam_idx][:, None, None, :] * (0.75 + 0.5 * x[..., None] / width)
    for r in range(view["clutter"].shape[1]):
        _paint(img, _boxes(y, x, view["clutter"][:, r], height, width, 0.1, 0.45),
               view["clutter_col"][:, r])
    _draw_person(img, ids, view, y, x)
    occ = _boxes(y, x, view["occ_box"], height, width, 0.25, 0.6) & view["occlude"][:, None, None]
    _paint(img, occ, view["occ_col"])
    per_image = (slice(None), None, None)
    img = np.clip(img * cam["gain"][cam_idx][per_image] + cam["offset"][cam_idx][per_image], 0, 1)
    img = img ** cam["gamma"][cam_idx][per_image + (None,)] * view["bright"][per_image + (None,)]
    return (np.clip(img + noise, 0, 1) * 255 + 0.5).astype(np.uint8)


def generate(num_ids: int, cams: int, images_per_cam: int, height: int, width: int,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``images_per_cam`` images of every identity (ids 1..num_ids) in every camera.

    Returns uint8 (N, H, W, 3) images, int64 pids and 0-based int64 cameras, identity-major. The same
    arguments always give the same pixels: every random number comes from one seeded generator, drawn
    in a fixed order and in fixed-size chunks.
    """
    if num_ids < 1 or cams < 1 or images_per_cam < 1 or height < 8 or width < 4:
        raise InputError(f"synthetic set needs num_ids, cams, images_per_cam >= 1 and an image of "
                         f"at least 8x4, got num_ids={num_ids} cams={cams} "
                         f"images_per_cam={images_per_cam} size={height}x{width}")
    rng = np.random.default_rng(seed)
    ids, camera = _identities(rng, num_ids), _cameras(rng, cams)
    n = num_ids * cams * images_per_cam
    pid_idx = np.repeat(np.arange(num_ids), cams * images_per_cam)
    cam_idx = np.tile(np.repeat(np.arange(cams), images_per_cam), num_ids)
    view = _views(rng, n, height, width)
    out = np.empty((n, height, width, 3), np.uint8)
    for start in range(0, n, CHUNK):
        sl = slice(start, min(start + CHUNK, n))
        noise = rng.standard_normal((sl.stop - start, height, width, 3), dtype=np.float32) * 0.03
        out[sl] = _render({k: a[pid_idx[sl]] for k, a in ids.items()}, camera,
                          {k: a[sl] for k, a in view.items()}, cam_idx[sl], noise, height, width)
    return out, pid_idx.astype(np.int64) + 1, cam_idx.astype(np.int64)


def load_synthetic(*, height: int, width: int, split_seed: int = 0, num_ids: int = 250,
                   num_test: int = 100, cams: int = 3, images_per_cam: int = 2,
                   seed: int = 0) -> ReidSet:
    """The synthetic set split into ``num_ids - num_test`` train and ``num_test`` test people.

    ``seed`` fixes the people and pictures, ``split_seed`` which of them are test people, so several
    splits of one rendered population can be evaluated like VIPeR's ten splits.
    """
    if cams < 2:
        raise InputError(f"synthetic set needs cams >= 2 (query and gallery cameras differ), got {cams}")
    images, pids, cam = generate(num_ids, cams, images_per_cam, height, width, seed)
    train, test = split_people(pids.tolist(), num_ids - num_test, num_test, split_seed, "synthetic")
    is_train, is_test = np.isin(pids, list(train)), np.isin(pids, list(test))
    parts = {part: (images[sel], pids[sel], cam[sel]) for part, sel in (
        ("train", is_train), ("query", is_test & (cam == 0)), ("gallery", is_test & (cam > 0)))}
    return make_reid_set("synthetic", "single_shot", parts)
