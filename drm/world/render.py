"""The embedded synthetic world: shapes (core features) drawn with non-core features.

A class is a shape. Everything else is non-core: background colour (tied to the class in
the downstream training data: the shortcut ERM latches on to), object colour, position,
size, rotation, noise, and rendering style. Pre-training sees every style; the downstream
train and ID splits see only `train_styles` (filled), the OOD splits only the others, with
backgrounds independent of the class. This is the "style shift" design of
shared/WORLD-NOTES.md, where fine-tuning on one style makes the model forget the others.

Everything is a deterministic function of (WorldConfig, split name), and the same on every
machine: rendering uses only IEEE-754 operations that are correctly rounded everywhere
(+, -, *, /, comparisons, floor) in float64, never sin, cos, arctan2 or exp, whose
results differ in the last bit between CPUs and math libraries (numpy dispatches them to
SIMD code chosen per CPU) and then flip pixels on shape boundaries. So shapes are polygons
with literal vertices, a rotation is drawn as the tangent of its half angle (cos and sin
are then rational in it), dashes follow a pseudo-angle, stripes a floor parity, and
anti-aliasing counts covered sub-pixels in integers. world.json records a content
checksum of every split (`content_sha256`), so two machines can compare worlds without
comparing Parquet bytes (which also carry the writer's version).

Images are rendered on a `canvas`-pixel grid, anti-aliased down to `image_size`, and stored
as raw uint8 RGB bytes in Parquet, one file per split, with one row per sample and its
group labels.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from drm.world.config import STYLES

# Shapes as polygons, star-shaped about the origin: vertices (x, y) with y up, in order of
# angle; None = circle. Literal decimals, so no trigonometry runs at render time.
SHAPES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,
    "triangle": [(0.0, 1.0), (-0.866025, -0.5), (0.866025, -0.5)],
    "square": [(0.707107, 0.707107), (-0.707107, 0.707107), (-0.707107, -0.707107), (0.707107, -0.707107)],
    "diamond": [(0.55, 0.0), (0.0, 1.0), (-0.55, 0.0), (0.0, -1.0)],
    "star": [(0.951057, 0.309017), (0.24687, 0.339787), (0.0, 1.0), (-0.24687, 0.339787),
             (-0.951057, 0.309017), (-0.399444, -0.129787), (-0.587785, -0.809017), (0.0, -0.42),
             (0.587785, -0.809017), (0.399444, -0.129787)],
    "cross": [(1.0, 0.32), (0.32, 0.32), (0.32, 1.0), (-0.32, 1.0), (-0.32, 0.32), (-1.0, 0.32),
              (-1.0, -0.32), (-0.32, -0.32), (-0.32, -1.0), (0.32, -1.0), (0.32, -0.32), (1.0, -0.32)],
    "arrowhead": [(0.0, 1.0), (-0.707107, -0.707107), (0.0, -0.3), (0.707107, -0.707107)],
    "hourglass": [(0.22, 0.0), (0.573576, 0.819152), (-0.573576, 0.819152), (-0.22, 0.0),
                  (-0.573576, -0.819152), (0.573576, -0.819152)],
}
CIRCLE_RADIUS = 0.85  # the circle's radius in the same units as the polygons' vertices
# Rotations are drawn as t = tan(angle / 2) in [-MAX_TURN, MAX_TURN] (about +-14 degrees).
MAX_TURN = 0.125

CORE_TRAITS: dict[str, list[str]] = {
    "circle": ["a smooth round edge", "no corners at all", "a curved outline of constant width"],
    "triangle": ["three straight sides", "three sharp corners", "a pointed top and a flat base"],
    "square": ["four equal straight sides", "four right-angle corners", "a flat top and a flat bottom"],
    "diamond": ["four slanted sides", "a tall narrow rhombus outline", "pointed top and bottom corners"],
    "star": ["five pointed spikes", "alternating tips and notches", "a spiky outline"],
    "cross": ["four arms of equal length", "the outline of a plus sign", "twelve right-angle corners"],
    "arrowhead": ["a sharp tip pointing up", "a notch cut into its base", "two swept-back barbs"],
    "hourglass": ["two triangles meeting at a narrow waist", "a pinched middle", "a wide top and a wide bottom"],
}

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.15, 0.15), "green": (0.15, 0.65, 0.20), "blue": (0.15, 0.25, 0.85),
    "yellow": (0.90, 0.85, 0.15), "purple": (0.55, 0.20, 0.70), "orange": (0.95, 0.55, 0.10),
    "cyan": (0.15, 0.80, 0.85), "gray": (0.50, 0.50, 0.50),
}

SPLITS = {  # name -> role
    "train": "train", "id_val": "id", "id_test": "id", "ood_val": "ood", "ood_test": "ood",
}
_NAME_TEMPLATES = ["a {c}", "a photo of a {c}", "a picture of a {c}", "an image of a {c}", "a drawing of a {c}"]


CLASSNAMES = list(SHAPES)


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode())])


def _colours(rng, bg: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Object colours at about the given contrast (RMS RGB distance) from each background."""
    d = rng.normal(size=(len(bg), 3))
    # The norm written out: a reduction's summation order may depend on the CPU's SIMD width.
    d /= np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])[:, None]
    fg = bg + d * contrast[:, None] * np.sqrt(3.0)
    # Reflect what falls outside [0, 1] back inside: keeps most of the contrast.
    fg = np.abs(fg)
    fg = np.where(fg > 1, 2 - fg, fg)
    return np.clip(fg, 0, 1)


def rotation(turn):
    """cos and sin of the angle whose half-angle tangent is `turn`: exact rational forms."""
    t2 = turn * turn
    return (1 - t2) / (1 + t2), 2 * turn / (1 + t2)


def _shape_frame(dx, dy, turn, scale):
    """Canvas offsets from the centre (y down) -> the shape's own frame (y up, unrotated,
    vertices at unit size)."""
    c, s = rotation(np.asarray(turn, np.float64))
    c, s, k = c[:, None, None], s[:, None, None], np.asarray(scale, np.float64)[:, None, None]
    px, py = dx, -dy
    return (px * c + py * s) / k, (py * c - px * s) / k


def _outline(qx, qy, vertices, *, distance: bool):
    """(inside, squared distance to the outline or None) of points in a shape's frame."""
    if vertices is None:
        rho2 = qx * qx + qy * qy
        d2 = (np.sqrt(rho2) - CIRCLE_RADIUS) ** 2 if distance else None
        return rho2 <= CIRCLE_RADIUS * CIRCLE_RADIUS, d2
    inside = (qx == 0) & (qy == 0)
    d2 = np.full(qx.shape, np.inf) if distance else None
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1]):
        # Inside the fan triangle (origin, a, b): in its angular sector and left of a -> b.
        sector = (ax * qy - ay * qx >= 0) & (qx * by - qy * bx > 0)
        ex, ey = bx - ax, by - ay
        wx, wy = qx - ax, qy - ay
        inside |= sector & (ex * wy - ey * wx >= 0)
        if distance:
            h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            d2 = np.minimum(d2, (wx - h * ex) ** 2 + (wy - h * ey) ** 2)
    return inside, d2


def _shapes(shape_idx, dx, dy, turn, scale, *, distance):
    """Per pixel: inside the shape, and (where `distance`, per image) the squared distance to
    its outline in canvas pixels (inf elsewhere: the styles that draw no outline skip it)."""
    inside = np.zeros(dx.shape, bool)
    d2 = np.full(dx.shape, np.inf)
    for s, name in enumerate(CLASSNAMES):
        for dist in (False, True):
            sel = np.nonzero((shape_idx == s) & (distance == dist))[0]
            if len(sel):
                qx, qy = _shape_frame(dx[sel], dy[sel], turn[sel], scale[sel])
                inside[sel], d2_unit = _outline(qx, qy, SHAPES[name], distance=dist)
                if dist:
                    d2[sel] = d2_unit * (np.asarray(scale, np.float64)[sel] ** 2)[:, None, None]
    return inside, d2


def _pseudo_angle(x, y):
    """A monotone stand-in for the angle of (x, y) (y up): 0 to 4 per turn, one division."""
    s = np.abs(x) + np.abs(y)
    r = y / np.where(s == 0, 1.0, s)
    return np.where(x >= 0, np.where(y >= 0, r, 4 + r), 2 - r)


def render(shape_idx, style_idx, bg, fg, cx, cy, radius, turn, noise, rng, canvas=64, image_size=32):
    """Render a batch of images -> uint8 array (n, image_size, image_size, 3).

    cx, cy, radius in canvas pixels; turn = tan(rotation / 2); bg, fg RGB in [0, 1]."""
    n = len(shape_idx)
    shape_idx, style = np.asarray(shape_idx), np.asarray(style_idx)
    turn, radius = np.asarray(turn, np.float64), np.asarray(radius, np.float64)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float64) + 0.5
    dx = xx[None] - np.asarray(cx, np.float64)[:, None, None]
    dy = yy[None] - np.asarray(cy, np.float64)[:, None, None]
    st = {s: i for i, s in enumerate(STYLES)}
    outlined = np.isin(style, [st["outline"], st["dashed"], st["striped"]])
    inside, d2 = _shapes(shape_idx, dx, dy, turn, radius, distance=outlined)
    t2 = (np.maximum(1.6, 0.12 * radius) ** 2)[:, None, None]  # outline half-width, squared
    is_ = {s: (style == i)[:, None, None] for s, i in st.items()}
    mask = (is_["filled"] | is_["inverted"]) & inside
    mask |= is_["outline"] & (d2 <= t2)
    u = _pseudo_angle(dx, -dy) * 3.5  # 14 dashes per turn
    mask |= is_["dashed"] & (d2 <= 1.44 * t2) & (u - np.floor(u) < 0.468)
    c, s = rotation(rng.uniform(-1.0, 1.0, size=n))  # stripe direction, any orientation
    proj = dx * c[:, None, None] + dy * s[:, None, None]
    stripes = (np.floor(proj / 3.0).astype(np.int64) & 1) == 0  # period 6 canvas pixels
    mask |= is_["striped"] & ((inside & stripes) | (d2 <= 1.0))
    sketch = np.nonzero(style == st["sketch"])[0]
    if len(sketch):  # three jittered thin outlines, computed for the sketch images only
        k = len(sketch)
        sk = np.zeros((k, canvas, canvas), bool)
        for _ in range(3):
            jx = rng.normal(0, 1.2, k)[:, None, None]
            jy = rng.normal(0, 1.2, k)[:, None, None]
            jt = turn[sketch] + rng.normal(0, 0.04, k)
            js = radius[sketch] * rng.uniform(0.92, 1.06, k)
            _, d2_j = _shapes(shape_idx[sketch], dx[sketch] - jx, dy[sketch] - jy, jt, js,
                              distance=np.ones(k, bool))
            sk |= d2_j <= 1.0
        mask[sketch] |= sk
    # Anti-aliasing as integer coverage counts (an exact sum), then one blend per pixel.
    f = canvas // image_size
    cover = mask.reshape(n, image_size, f, image_size, f).sum(axis=(2, 4), dtype=np.int64)
    cover = np.where(style[:, None, None] == st["inverted"], f * f - cover, cover)  # object in bg colour
    w = cover[..., None].astype(np.float64)
    bgc = np.asarray(bg, np.float64)[:, None, None, :]
    fgc = np.asarray(fg, np.float64)[:, None, None, :]
    img = (fgc * w + bgc * (f * f - w)) / (f * f)
    img = img + rng.standard_normal(size=img.shape) * np.asarray(noise, np.float64)[:, None, None, None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sample_split(cfg, split: str, n: int):
    """Sample attributes for one split and render it. Returns (images, attributes dict)."""
    rng = _split_rng(cfg.seed, split)
    C = len(CLASSNAMES)
    colours = np.array(list(PALETTE.values()))
    names = list(PALETTE)
    y = rng.integers(0, C, n)
    role = SPLITS.get(split, "pretrain")
    train_styles = [STYLES.index(s) for s in cfg.train_styles]
    other_styles = [i for i in range(len(STYLES)) if i not in train_styles]
    if role in ("train", "id"):
        style = rng.choice(train_styles, n)
        match = rng.random(n) < cfg.spurious_rate
    elif role == "ood":
        style = rng.choice(other_styles, n)
        match = np.zeros(n, bool)
    else:  # pretrain: every style; context bias only where the caption is the bare name
        style = rng.integers(0, len(STYLES), n)
        match = np.zeros(n, bool)
    kind = np.full(n, "", dtype=object)
    if role == "pretrain":
        # Caption kinds; a bare-name caption comes with its class's background colour
        # caption_context_rate of the time (the mild context bias of web captions).
        u = rng.random(n)
        kind = np.where(u < 0.5, "name", np.where(u < 0.7, "traits", "name_traits")).astype(object)
        match = (kind == "name") & (rng.random(n) < cfg.caption_context_rate)
    bg_idx = np.where(match, y % len(names), rng.integers(0, len(names), n))
    canvas = cfg.canvas
    radius = rng.uniform(*cfg.radius, n) * canvas
    contrast = rng.uniform(*cfg.contrast, n)
    clarity = np.array(["clear"] * n, dtype=object)
    if role != "pretrain" and cfg.unclear_rate > 0:
        unclear = rng.random(n) < cfg.unclear_rate
        small = unclear & (rng.random(n) < 0.5)
        faint = unclear & ~small
        radius = np.where(small, rng.uniform(0.18, 0.22, n) * canvas, radius)
        contrast = np.where(faint, rng.uniform(0.10, 0.18, n), contrast)
        clarity[small], clarity[faint] = "small", "faint"
    margin = radius + 2
    cx = rng.uniform(margin, canvas - margin)
    cy = rng.uniform(margin, canvas - margin)
    turn = rng.uniform(-MAX_TURN, MAX_TURN, n)
    noise = rng.uniform(*cfg.noise, n)
    bg = colours[bg_idx]
    fg = _colours(rng, bg, contrast)
    attrs = dict(y=y, caption_kind=kind, style=np.array(STYLES)[style], bg=np.array(names)[bg_idx],
                 bg_match=(bg_idx == y % len(names)), clarity=clarity, radius=radius / canvas,
                 contrast=contrast, turn=turn, noise=noise)
    images = np.empty((n, cfg.image_size, cfg.image_size, 3), np.uint8)
    chunk = 1000
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        images[sl] = render(y[sl], style[sl], bg[sl], fg[sl], cx[sl], cy[sl], radius[sl], turn[sl],
                            noise[sl], rng, canvas, cfg.image_size)
    return images, attrs, rng


def captions_for(rng, y, style, kind) -> list[str]:
    """Pre-training captions: the class name, its traits, or both ("name: trait"); a style
    word in half of the names; the background colour is never named."""
    out = []
    for yi, si, k in zip(y, style, kind):
        c = CLASSNAMES[yi]
        traits = CORE_TRAITS[c]
        t = traits[rng.integers(len(traits))]
        name = c if rng.random() < 0.5 else f"{si} {c}"
        if k == "name":
            cap = _NAME_TEMPLATES[rng.integers(len(_NAME_TEMPLATES))].format(c=name)
        elif k == "traits":
            cap = f"a shape with {t}"
        else:
            cap = f"a {name}: {t}"
        out.append(cap)
    return out


def content_digest(table) -> str:
    """sha256 of a split's content (column names, types and values), independent of how the
    Parquet file encodes it: equal digests mean equal pixels and labels."""
    import pyarrow as pa

    h = hashlib.sha256()
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        h.update(f"{name}:{col.type};".encode())
        if pa.types.is_binary(col.type) or pa.types.is_string(col.type):
            for v in col.to_pylist():
                b = v if isinstance(v, bytes) else v.encode()
                h.update(len(b).to_bytes(8, "little") + b)
        else:
            values = col.to_numpy(zero_copy_only=False)
            h.update(values.astype(values.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def generate(cfg, out_dir, progress: bool = True) -> dict:
    """Render every split of the world into out_dir (Parquet per split + world.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"pretrain": cfg.n_pretrain, "train": cfg.n_train, "id_val": cfg.n_id_val,
             "id_test": cfg.n_id_test, "ood_val": cfg.n_ood_val, "ood_test": cfg.n_ood_test}
    digests = {}
    for split in tqdm(sizes, desc="world: render splits", disable=not progress):
        images, attrs, rng = _sample_split(cfg, split, sizes[split])
        n = len(images)
        cols = {"id": [f"{split}-{i:06d}" for i in range(n)],
                "y": attrs["y"].astype(np.int32),
                "image": [images[i].tobytes() for i in range(n)]}
        for k, v in attrs.items():
            if k != "y" and (k != "caption_kind" or split == "pretrain"):
                cols[k] = v.tolist() if v.dtype == object else v
        if split == "pretrain":
            cols["caption"] = captions_for(rng, attrs["y"], attrs["style"], attrs["caption_kind"])
        table = pa.table(cols)
        digests[split] = content_digest(table)
        pq.write_table(table, out / f"{split}.parquet")
    meta = {
        "classnames": CLASSNAMES, "core_traits": CORE_TRAITS, "styles": list(STYLES),
        "train_styles": list(cfg.train_styles), "palette": list(PALETTE),
        "splits": SPLITS, "image_size": cfg.image_size,
        "group_columns": ["style", "bg", "bg_match", "clarity"],
        # Compare these across machines: the Parquet bytes also record pyarrow's version.
        "content_sha256": digests,
        # The params it was rendered with: the diagnostics stage renders probes of this world
        # from them (so it tracks the world's data, not the `world` params section).
        "config": cfg.model_dump(mode="json"),
    }
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
