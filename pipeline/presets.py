"""The paper's setups as params files (presets/*.yaml): list, check, apply, and fetch what they need.

    python -m pipeline.presets list
    python -m pipeline.presets check iwildcam-vit-b-16        # what is missing, and the command for each
    python -m pipeline.presets apply iwildcam-vit-b-16        # validates it and writes it over params.yaml
    python -m pipeline.presets apply imagenet-vit-b-16 --templates flyp   # FLYP's 80 templates instead
    python -m pipeline.presets fetch-model                    # params.yaml's model -> model.weights (download)
    python -m pipeline.presets iwildcam-classnames --labels labels.csv --out data/wilds/classnames.json

A preset is a whole params file, validated like params.yaml (drm.params): with it, `dvc repro`
runs describe, zeroshot, finetune, evaluate, diagnostics (a one-line note for real data) and
report, never the embedded world or pre-training (embedded/dvc.yaml). docs/presets.md has each
preset, its downloads, the numbers to compare with and a GPU estimate.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from drm.base.errors import DRMError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "presets"
TEMPLATES = PRESETS / "templates.yaml"
AUTHORS = "https://raw.githubusercontent.com/vaynexie/DRM/HEAD/prompts"
WISE_FT_LABELS = "https://raw.githubusercontent.com/mlfoundations/wise-ft/HEAD/src/datasets/iwildcam_metadata/labels.csv"
# The DRM authors' concept-description file of each dataset (in their repository's prompts/):
# iWildCam's is keyed by class index with English common names inside (not
# concept_description/result_cd_iwildcam.json, keyed by Latin names); FMoW's has 6 sentences a
# class; ImageNet's one phrase a class.
DESCRIPTION_FILES = {"iwildcam": "iwildcam_cd.json", "fmow": "fmow_cd.json", "imagenet": "imagenet_cd.json"}


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml") if p.name != TEMPLATES.name)


def path_of(name: str) -> Path:
    path = PRESETS / f"{name}.yaml"
    if name == TEMPLATES.stem or not path.exists():
        raise DRMError(f"no preset {name!r}; the presets: {', '.join(names())}")
    return path


def load(name: str, templates: str = "authors") -> dict:
    """A preset's params (a dict), validated as a whole params file; `templates`: `authors`
    (the preset's own: the one template of the DRM authors' evaluation code) or `flyp` (the
    larger set FLYP trains with, presets/templates.yaml)."""
    from drm.params import parse_params

    raw = yaml.safe_load(path_of(name).read_text())
    if templates == "flyp":
        sets = yaml.safe_load(TEMPLATES.read_text())
        raw["zeroshot"]["templates"] = list(sets[raw["data"]["source"]])
    elif templates != "authors":
        raise DRMError(f"--templates {templates!r}: authors or flyp")
    try:
        parse_params(raw)
    except DRMError as e:
        raise DRMError(f"preset {name} does not validate: {e}") from None
    return raw


def missing(params: dict, base: Path = ROOT, preset: str | None = None) -> list[str]:
    """What a run with these params still needs on disk, each with the command that gets it."""
    from drm.base.params import ModelConfig

    out = []
    data, source = params["data"], params["data"]["source"]
    root = base / data["root"]
    if source in ("iwildcam", "fmow"):
        from drm.datasets.wilds_data import FMoWSource, IWildCamSource

        cls = IWildCamSource if source == "iwildcam" else FMoWSource
        try:
            cls.locate(root)
        except DRMError:
            out.append(f"the {cls.title} data in {data['root']}: python -c \"from wilds import get_dataset; "
                       f"get_dataset('{source}', download=True, root_dir='{data['root']}')\"")
        if source == "iwildcam" and not any((p / "classnames.json").exists()
                                            for p in (root, root / "iwildcam_v2.0")):
            out.append(f"English common names in {data['root']}/classnames.json: curl -fL -o labels.csv "
                       f"{WISE_FT_LABELS} && python -m pipeline.presets iwildcam-classnames --labels labels.csv "
                       f"--out {data['root']}/classnames.json")
    elif source == "imagenet" and not (root / "imagenet" / "train").is_dir():
        out.append(f"ImageNet in {data['root']}/imagenet/{{train,val}}/<wnid>/ and its shifts beside it "
                   "(README: Real models and real data; drm/datasets/imagenet.py has the layout)")
    desc = params.get("describe", {})
    if desc.get("provider") == "file" and desc.get("file") and not (base / desc["file"]).exists():
        fname = Path(desc["file"]).name
        url = f"{AUTHORS}/{fname}" if fname in DESCRIPTION_FILES.values() else "(your own file)"
        out.append(f"the concept descriptions {desc['file']}: curl -fL -o {desc['file']} {url}")
    model = ModelConfig(**params.get("model", {}))
    if model.hub and not (base / model.weights / "open_clip_config.json").exists():
        out.append(f"the model {model.name} (pretrained={model.pretrained}) in {model.weights}: "
                   "python -m pipeline.presets fetch-model" + (f" --preset {preset}" if preset else ""))
    return out


def write_params(raw: dict, out: Path, name: str) -> None:
    from drm.base.atomic import write_text

    header = (f"# Written by `python -m pipeline.presets apply {name}` from presets/{name}.yaml "
              "(docs/presets.md).\n# git checkout params.yaml brings back the embedded default.\n")
    write_text(out, header + yaml.safe_dump(raw, sort_keys=False, width=120, default_flow_style=None,
                                            allow_unicode=True))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets")
    chk = sub.add_parser("check", help="validate a preset and list what its run still needs")
    chk.add_argument("name")
    app = sub.add_parser("apply", help="write a preset over params.yaml (validated)")
    app.add_argument("name")
    app.add_argument("--templates", default="authors", choices=["authors", "flyp"],
                     help="df prompts: the DRM authors' one template (default) or FLYP's larger set")
    app.add_argument("--out", type=Path, default=ROOT / "params.yaml")
    fet = sub.add_parser("fetch-model", help="download the model of params.yaml (or of a preset) into model.weights")
    fet.add_argument("--preset", default=None)
    fet.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    cls = sub.add_parser("iwildcam-classnames", help="English common names for iWildCam from WiSE-FT's labels.csv")
    cls.add_argument("--labels", type=Path, required=True)
    cls.add_argument("--out", type=Path, required=True, help="data.root/classnames.json")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for n in names():
                first = path_of(n).read_text().splitlines()[0]
                print(f"{n:24s} {first.split(':', 1)[1].strip()}")
        elif args.command == "check":
            todo = missing(load(args.name), preset=args.name)
            print(f"preset {args.name}: valid")
            for item in todo:
                print(f"  missing: {item}")
            if not todo:
                print("  everything it needs is there: python -m pipeline.presets apply "
                      f"{args.name} && dvc repro")
            return 1 if todo else 0
        elif args.command == "apply":
            raw = load(args.name, args.templates)
            write_params(raw, args.out, args.name)
            print(f"wrote {args.out} from preset {args.name}" + (" (FLYP's templates)" if args.templates == "flyp" else ""))
            for item in missing(raw, base=args.out.resolve().parent):
                print(f"  still missing: {item}")
        elif args.command == "fetch-model":
            from drm.base.clip import fetch_model
            from drm.base.params import ModelConfig, read_yaml

            from pydantic import ValidationError

            raw = load(args.preset) if args.preset else read_yaml(args.params)
            try:
                model = ModelConfig(**(raw.get("model") or {}))
            except ValidationError as e:
                raise DRMError(f"{args.params}: model: {e.errors()[0]['msg']}") from None
            if not model.hub:
                raise DRMError(f"model.name is {model.name}: a local folder, nothing to fetch")
            out = fetch_model(model.name, model.pretrained, ROOT / model.weights)
            print(f"saved {model.name} (pretrained={model.pretrained}) in {out}")
        elif args.command == "iwildcam-classnames":
            import json

            from drm.base.atomic import write_text
            from drm.datasets.wilds_data import iwildcam_common_names

            names_ = iwildcam_common_names(args.labels)
            write_text(args.out, json.dumps(names_, indent=1, ensure_ascii=False) + "\n")
            print(f"wrote {len(names_)} class names to {args.out}")
    except DRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
