"""The `file` provider: import published descriptions (e.g. the DRM authors' JSON files).

Accepted shape: a JSON object mapping class index (as "0", "1", ...) or class name to a
string or a list of strings. The official iWildCam/ImageNet files map index -> one
sentence; FMoW maps name -> a list of 6.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from drm.describe import DescribeContext, DescribeResult
from drm.base.errors import DescriptionsError


def _positions(pairs: list[tuple], classnames: list[str]) -> list[tuple]:
    """A key that repeats names the classes at its positions, when the file has one entry per
    class (the authors' code matches classes by key order): "missile" twice in an ImageNet
    file is classes 657 and 744 (here "missile" and "projectile"; "sunglasses" likewise). Values that are
    themselves objects come back as lists of pairs and are rejected below."""
    keys = [k for k, _ in pairs]
    repeated = {k for k in keys if keys.count(k) > 1}
    if not repeated or len(pairs) != len(classnames):
        return pairs
    return [(str(i) if key in repeated else key, value) for i, (key, value) in enumerate(pairs)]


def read_class_mapping(path, classnames: list[str], require_all: bool = True) -> dict[str, list[str]]:
    path = Path(path)
    if not path.exists():
        raise DescriptionsError(f"descriptions file {path} does not exist")
    try:
        # pairs, not a dict: a key may repeat (the authors' ImageNet file has open_clip's two
        # "missile" classes), and a dict would keep only its last value
        raw = json.loads(path.read_text(), object_pairs_hook=lambda pairs: pairs)
    except json.JSONDecodeError as e:
        raise DescriptionsError(f"{path} is not valid JSON: {e}") from e
    if isinstance(raw, list) and all(isinstance(p, tuple) for p in raw):
        top = dict(raw)
        if "descriptions" in top and "schema_version" in top:
            raw = top["descriptions"]  # our own schema
    if not (isinstance(raw, list) and all(isinstance(p, tuple) for p in raw)):
        raise DescriptionsError(f"{path}: expected a JSON object class -> description(s)")
    raw = _positions(raw, classnames)
    index = {c: i for i, c in enumerate(classnames)}
    if len(index) != len(classnames):
        dup = sorted({c for c in classnames if classnames.count(c) > 1})
        raise DescriptionsError(f"the data source has duplicate class names {dup[:10]}: give them distinct names")
    norm = lambda k: " ".join(k.replace("_", " ").lower().split())  # "Airport_hangar" == "airport hangar"
    lowered = {norm(c): c for c in classnames}
    out: dict[str, list[str]] = {}
    unknown = []
    for key, value in raw:
        name = None
        if key in index:
            name = key
        elif norm(key) in lowered:
            name = lowered[norm(key)]
        elif key.strip().isdigit() and int(key) < len(classnames):
            name = classnames[int(key)]
        if name is None:
            unknown.append(key)
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DescriptionsError(f"{path}: class {key!r} must map to a string or a list of strings")
        out[name] = value
    if unknown:
        raise DescriptionsError(
            f"{path}: {len(unknown)} key(s) match no class index or name: {unknown[:10]}")
    if require_all:
        missing = [c for c in classnames if c not in out]
        if missing:
            raise DescriptionsError(
                f"{path} is missing {len(missing)} class(es): {missing[:10]}; "
                "add them or supply describe.overrides")
    return out


@dataclass
class FileProvider:
    path: Path
    name: str = "file"

    @classmethod
    def from_config(cls, cfg, ctx: DescribeContext):
        if not cfg.file:
            raise DescriptionsError("describe.provider is 'file' but describe.file (a JSON path) is not set")
        return cls(Path(ctx.base_dir) / cfg.file)

    def describe(self, classnames: list[str]) -> DescribeResult:
        mapping = read_class_mapping(self.path, classnames)
        return DescribeResult(mapping, {"source_file": str(self.path)})
