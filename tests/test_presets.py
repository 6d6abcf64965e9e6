"""The paper's setups (presets/*.yaml): each validates as a params file and holds the published
settings; each benchmark's preset runs end to end on the small fakes in the real on-disk layouts
with a tiny random open_clip model standing in for the real one (a params override, no
download); and a real-data `dvc repro` runs no stage of the embedded world (world, pretrain)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from drm.base.errors import ConfigError, DRMError

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = {"iwildcam": "iwildcam", "fmow": "fmow", "imagenet": "imagenet"}
MODELS = {"vit-b-16": "ViT-B-16", "vit-l-14": "ViT-L-14", "vit-l-14-336": "ViT-L-14-336"}
# FLYP's published fine-tuning settings (lr, weight decay, batch, epochs; warmup 500 steps)
FLYP = {"iwildcam": (1e-5, 0.2, 256, 20), "fmow": (1e-5, 0.2, 256, 20), "imagenet": (1e-5, 0.1, 512, 10)}
# the df prompt of the DRM authors' evaluation code, and their description file
AUTHORS = {"iwildcam": ("a photo of {c}.", "iwildcam_cd.json"), "fmow": ("satellite photo of a {c}.", "fmow_cd.json"),
           "imagenet": ("a good photo of the {c}.", "imagenet_cd.json")}
GROUPS = {"iwildcam": ["location"], "fmow": ["region", "year"], "imagenet": ["domain"]}
HEADLINE = {"iwildcam": ("bench_F1-macro_all", "bench_F1-macro_all"), "fmow": ("bench_acc_avg", "bench_acc_worst_region"),
            "imagenet": ("accuracy", "accuracy")}


def _preset(name):
    return yaml.safe_load((ROOT / "presets" / f"{name}.yaml").read_text())


def test_the_presets_are_there():
    from pipeline.presets import names

    assert names() == sorted(f"{b}-{m}" for b in BENCHMARKS for m in MODELS)


@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_each_preset_validates_with_the_published_settings(bench):
    from drm.params import parse_params
    from pipeline.presets import load

    first = None
    for key, arch in MODELS.items():
        name = f"{bench}-{key}"
        raw = load(name)  # validated as a whole params file
        p = parse_params(raw)
        assert "world" not in raw and "pretrain" not in raw  # nothing of the embedded default
        assert (p.model.name, p.model.pretrained) == (arch, "openai") and p.model.hub
        assert p.model.weights == f"models/{arch}-openai"
        assert p.data.source == bench
        lr, wd, batch, epochs = FLYP[bench]
        ft = p.finetune
        assert (ft.lr, ft.wd, ft.batch_size, ft.epochs, ft.warmup_steps) == (lr, wd, batch, epochs, 500)
        drm = p.methods["drm_flyp"]
        assert (drm.loss, drm.erm_term) == ("drm", "flyp") and p.methods["flyp"].loss == "flyp"
        assert ft.methods == ["flyp", "drm_flyp"]
        assert p.evaluate.beta == 0.5 and p.evaluate.group_by == GROUPS[bench]
        template, desc = AUTHORS[bench]
        assert p.zeroshot.templates == [template]
        assert (p.describe.provider, Path(p.describe.file).name) == ("file", desc)
        assert (p.report.headline.id, p.report.headline.ood) == HEADLINE[bench]
        assert p.wise.alphas == [round(0.1 * i, 1) for i in range(11)]
        flyp = parse_params(load(name, templates="flyp"))
        assert len(flyp.zeroshot.templates) == {"iwildcam": 2, "fmow": 14, "imagenet": 80}[bench]
        assert template in flyp.zeroshot.templates
        # the presets of one benchmark differ only in the model
        rest = {k: v for k, v in raw.items() if k != "model"}
        first = first or rest
        assert rest == first, name


def test_openai_spelling_is_refused_with_the_open_clip_name():
    from drm.params import parse_params
    from pipeline.presets import load

    raw = load("iwildcam-vit-b-16")
    for written, name in (("ViT-B/16", "ViT-B-16"), ("ViT-L/14", "ViT-L-14"), ("ViT-L/14@336px", "ViT-L-14-336")):
        raw["model"]["name"] = written
        with pytest.raises(ConfigError, match=f"OpenAI's spelling; open_clip .* calls it '{name}'"):
            parse_params(raw)
    raw["model"] = {"name": "local-dir:models/mine", "weights": "models/other"}
    with pytest.raises(ConfigError, match="set weights: models/mine"):
        parse_params(raw)
    raw["model"] = {"name": "ViT-B-16", "weights": "models/b"}
    with pytest.raises(ConfigError, match="pretrained is not set"):
        parse_params(raw)


def _tiny_arch():
    return {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8,
                                            "head_width": 16},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _tiny_model_folder(path: Path) -> Path:
    """A tiny randomly initialised open_clip ViT CLIP as a local model folder."""
    from drm.base.clip import build_clip, save_model_folder

    torch.manual_seed(0)
    arch = _tiny_arch()
    return save_model_folder(build_clip(arch), arch, path, 16)


def test_fetch_model_saves_a_folder_that_loads_the_same_weights(tmp_path):
    """fetch_model through open_clip (a tiny architecture registered with open_clip, weights
    from a file: no download) -> a local folder that load_model reads back, refusing a
    params model that is not the one fetched."""
    import open_clip
    from safetensors.torch import save_file

    from drm.base.clip import build_clip, fetch_model, load_model
    from drm.base.params import ModelConfig

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "drm-test-tiny.json").write_text(json.dumps(_tiny_arch()))
    open_clip.add_model_config(configs)
    torch.manual_seed(1)
    source = build_clip(_tiny_arch())
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    cfg = ModelConfig(name="drm-test-tiny", pretrained=str(weights), weights="models/tiny")
    with pytest.raises(DRMError, match="fetch it once with `python -m pipeline.presets fetch-model`"):
        load_model(cfg, base_dir=tmp_path)
    fetch_model(cfg.name, cfg.pretrained, tmp_path / "models/tiny")
    info = json.loads((tmp_path / "models/tiny/drm_model.json").read_text())
    assert (info["name"], info["pretrained"]) == (cfg.name, cfg.pretrained)
    model, _, _, _ = load_model(cfg, base_dir=tmp_path)
    got, want = model.state_dict(), source.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    other = ModelConfig(name="ViT-B-16", pretrained="openai", weights="models/tiny")
    with pytest.raises(DRMError, match="holds drm-test-tiny .* but params.yaml's model is ViT-B-16"):
        load_model(other, base_dir=tmp_path)
    with pytest.raises(DRMError, match="did you mean"):
        fetch_model("ViT-B-61", "openai", tmp_path / "x")


def _labels_csv(path: Path, english: list[str]) -> Path:
    rows = [{"y": i, "category_id": i, "name": f"latin {i}", "english": e} for i, e in enumerate(english)]
    rows.append({"y": 99999, "category_id": 99, "name": "not a class", "english": "ignored"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_iwildcam_common_names_are_distinct_and_in_label_order(tmp_path):
    from drm.datasets.wilds_data import iwildcam_common_names

    names = iwildcam_common_names(_labels_csv(tmp_path / "labels.csv", ["empty", "Lowland paca", "lowland paca"]))
    assert names == ["empty", "lowland paca", "lowland paca (latin 2)"]
    with pytest.raises(DRMError, match="wise-ft"):
        iwildcam_common_names(tmp_path / "absent.csv")


def test_a_repeated_key_in_a_description_file_names_the_class_at_its_position(tmp_path):
    """The authors' ImageNet file repeats open_clip's "missile" (classes 657 and 744)."""
    from drm.describe.file import read_class_mapping

    path = tmp_path / "d.json"
    path.write_text('{"cat": "a small feline", "missile": "a long rocket", "missile": "a thrown object"}')
    assert read_class_mapping(path, ["cat", "missile", "projectile"]) == {
        "cat": ["a small feline"], "missile": ["a long rocket"], "projectile": ["a thrown object"]}


# ---- end to end: each benchmark's preset on the small fakes, a tiny model standing in --------------

def _tiny_overrides(raw: dict, batch_size: int = 4) -> dict:
    """The preset with a tiny model, CPU and one short epoch: the same stages and settings
    otherwise (methods, prompts, descriptions, beta, groups, headline)."""
    raw = dict(raw)
    raw["model"] = {"name": "local-dir:models/tiny", "pretrained": None, "weights": "models/tiny"}
    raw["finetune"] = {**raw["finetune"], "epochs": 1, "batch_size": batch_size, "precision": "fp32"}
    raw["wise"] = {"alphas": [0.0, 0.5, 1.0]}
    raw["runtime"] = {"device": "cpu", "threads": 1, "num_workers": 0}
    return raw


def _fake_data(bench: str, proj: Path) -> None:
    """The fake dataset in the preset's data.root, and the authors'-style description file."""
    from tests.test_datasets_real import write_fmow, write_iwildcam

    (proj / "descriptions").mkdir(exist_ok=True)
    if bench == "iwildcam":
        root = write_iwildcam(proj / "data" / "wilds")
        from pipeline.presets import main

        labels = _labels_csv(proj / "labels.csv", ["empty", "White-lipped peccary", "Central American agouti"])
        assert main(["iwildcam-classnames", "--labels", str(labels), "--out", str(root / "classnames.json")]) == 0
        desc = {str(i): f"{n} is an animal of kind {i}" for i, n in enumerate(["empty", "peccary", "agouti"])}
        (proj / "descriptions" / "iwildcam_cd.json").write_text(json.dumps(desc))
    elif bench == "fmow":
        write_fmow(proj / "data" / "wilds")
        from wilds.datasets.fmow_dataset import categories

        desc = {c: [f"{c} seen from above, view {k}" for k in range(6)] for c in categories}
        (proj / "descriptions" / "fmow_cd.json").write_text(json.dumps(desc))
    else:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        from tests.test_imagenet import WNIDS, _img, _objectnet_mappings

        root = proj / "data" / "imagenet"
        for w in WNIDS:
            (root / "imagenet" / "train" / w).mkdir(parents=True)
        for c in (0, 1, 2):
            for k in range(30):  # enough for the 1% of train that id_val holds out to be non-empty
                _img(root / "imagenet" / "train" / WNIDS[c] / f"{WNIDS[c]}_{k}.JPEG", (8 * k, c * 60, 0))
            _img(root / "imagenet" / "val" / WNIDS[c] / f"ILSVRC2012_val_{c:08d}.JPEG")
        _img(root / "imagenetv2-matched-frequency-format-val" / "2" / "a.jpeg")
        _img(root / "imagenet-r" / WNIDS[1] / "art_0.jpg")
        _img(root / "imagenet-a" / WNIDS[2] / "0.jpg")
        _img(root / "sketch" / WNIDS[0] / "sketch_0.JPEG")
        _objectnet_mappings(root)
        _img(root / "objectnet-1.0" / "images" / "banana" / "y.png", fmt="PNG")
        # keyed by open_clip's names, "missile" twice, as in the authors' file
        pairs = ", ".join(f"{json.dumps(n)}: {json.dumps('a thing called ' + n)}" for n in IMAGENET_CLASSNAMES)
        (proj / "descriptions" / "imagenet_cd.json").write_text("{" + pairs + "}")
    _tiny_model_folder(proj / "models" / "tiny")


def _check_metrics(bench: str, proj: Path, methods=("zeroshot", "flyp", "drm_flyp")) -> None:
    frame = pd.read_csv(proj / "metrics" / "all.csv")
    assert set(methods) == set(frame.method)
    assert set(frame[frame.method != "zeroshot"].beta.dropna()) == {0.5}  # dual inference, beta 0.5
    ident, ood = HEADLINE[bench]
    assert ident in frame.columns and ood in frame.columns
    for g in GROUPS[bench]:
        assert f"worst_{g}_accuracy" in frame.columns
    report = (proj / "reports" / "report.md").read_text()
    assert "## Headline metrics (dual head)" in report and f"{ood}" in report and "drm_flyp + WiSE-FT a=0.5" in report
    assert "diagnostics skipped" in report
    desc = json.loads((proj / "data" / "descriptions.json").read_text())
    assert desc["provenance"]["provider"] == "file"
    assert not (proj / "data" / "world").exists() and not (proj / "models" / "pretrained").exists()


@pytest.mark.slow
@pytest.mark.parametrize("bench", ["fmow", "imagenet"])
def test_preset_runs_end_to_end_on_the_fake_layout(bench, tmp_path):
    """Every stage the preset's `dvc repro` runs, in-process (as the Prefect flow runs them)."""
    from pipeline.flow import load_stages
    from pipeline.presets import load
    from tests.conftest import make_project, run_stages

    proj = tmp_path / "proj"
    proj.mkdir()
    _fake_data(bench, proj)
    raw = _tiny_overrides(load(f"{bench}-vit-b-16"), batch_size=32 if bench == "imagenet" else 4)
    methods = raw["finetune"]["methods"] if bench == "fmow" else ["drm_flyp"]  # 1000 classes: one run
    raw["finetune"]["methods"] = methods
    make_project(proj, raw)
    stages = [s.name for s in load_stages(str(proj))]  # what the flow (and dvc repro) would run
    assert set(stages) == {"describe", "zeroshot", "diagnostics", "evaluate", "report",
                           *(f"finetune@{m}-0" for m in methods)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ObjectNet's left-out classes, wilds' own warnings
        run_stages(proj, stages)
    _check_metrics(bench, proj, methods={"zeroshot", *methods})


@pytest.mark.slow
def test_a_real_data_dvc_repro_runs_no_world_or_pretrain_stage(tmp_path):
    """The iWildCam preset under a real `dvc repro` in a git project: the embedded pipeline's
    stages (embedded/dvc.yaml) are not upstream of anything, so neither runs."""
    from pipeline.presets import load
    from tests.test_pipeline_dvc import _ran, _run, git_project

    raw = _tiny_overrides(load("iwildcam-vit-b-16"))
    raw["finetune"]["methods"] = ["drm_flyp"]  # one run keeps it quick (flyp runs in the tests above)
    proj, env = git_project(tmp_path, raw)
    _fake_data("iwildcam", proj)
    out = _run(["dvc", "repro"], proj, env)
    assert _ran(out) == {"describe", "zeroshot", "finetune@drm_flyp-0", "evaluate", "diagnostics", "report"}, out
    _check_metrics("iwildcam", proj, methods={"zeroshot", "drm_flyp"})
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    assert not any("models/pretrained" in json.dumps(stage) for stage in lock.values())
    assert not (proj / "embedded" / "dvc.lock").exists()
