"""The descriptions schema and the world/file providers."""
import json

import pytest

from drm.config import DescribeConfig
from drm.describe import (DescribeContext, clean_descriptions, load_descriptions, run_describe,
                          validate_descriptions)
from drm.errors import DescriptionsError

CLASSES = ["cat", "dog", "sea turtle"]


def ctx(tmp_path, traits=None):
    return DescribeContext(CLASSES, traits, tmp_path)


def test_file_provider_accepts_index_or_name_keys_and_string_or_list(tmp_path):
    src = tmp_path / "d.json"
    src.write_text(json.dumps({"0": "A small furry animal.", "Dog": ["Four legs.", "A wet nose."],
                               "sea turtle": ["A domed shell."]}))
    out = tmp_path / "out.json"
    desc = run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), out)
    assert desc == {"cat": ["A small furry animal."], "dog": ["Four legs.", "A wet nose."],
                    "sea turtle": ["A domed shell."]}
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["classnames"] == CLASSES
    assert doc["provenance"]["provider"] == "file" and doc["provenance"]["counts"]["dog"] == 2
    assert load_descriptions(out, CLASSES) == desc


def test_file_missing_a_class_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": "y"}))
    with pytest.raises(DescriptionsError, match="missing 1 class.*sea turtle"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_file_with_empty_entry_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": ["  "], "2": "z"}))
    with pytest.raises(DescriptionsError, match="empty description.*dog"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_file_with_unknown_key_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": "y", "2": "z", "horse": "h"}))
    with pytest.raises(DescriptionsError, match="horse"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_overrides_are_merged_and_recorded(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": "y", "2": "z"}))
    (tmp_path / "over.json").write_text(json.dumps({"dog": ["A loyal canine with floppy ears."]}))
    cfg = DescribeConfig(provider="file", file="d.json", overrides="over.json")
    desc = run_describe(cfg, ctx(tmp_path), tmp_path / "o.json")
    assert desc["dog"] == ["A loyal canine with floppy ears."] and desc["cat"] == ["x"]
    prov = json.loads((tmp_path / "o.json").read_text())["provenance"]
    assert prov["overrides"]["classes"] == ["dog"]


def test_world_provider_uses_core_traits_only(tmp_path):
    traits = {c: [f"trait {i} of {c}" for i in range(3)] for c in CLASSES}
    desc = run_describe(DescribeConfig(provider="world", per_class=2), ctx(tmp_path, traits), tmp_path / "o.json")
    assert all(len(v) == 2 for v in desc.values())
    assert all("trait" in d for v in desc.values() for d in v)


def test_world_provider_needs_a_world(tmp_path):
    with pytest.raises(DescriptionsError, match="core-trait vocabulary"):
        run_describe(DescribeConfig(provider="world"), ctx(tmp_path), tmp_path / "o.json")


def test_clean_descriptions_untrusted_text():
    raw = ["  - A round shell.\x07 ", "a round shell.", "", 42, "1. Four\nlegs", "x" * 500]
    out = clean_descriptions(raw, max_chars=50)
    assert out[0] == "A round shell." and out[1] == "Four legs"
    assert len(out) == 3 and len(out[2]) <= 50


def test_validate_rejects_non_strings():
    with pytest.raises(DescriptionsError):
        validate_descriptions({"cat": [None]}, ["cat"])


def test_rerun_with_same_result_leaves_file_byte_identical(tmp_path):
    traits = {c: [f"trait {i} of {c}" for i in range(3)] for c in CLASSES}
    out = tmp_path / "o.json"
    run_describe(DescribeConfig(provider="world", per_class=2), ctx(tmp_path, traits), out)
    first = out.read_bytes()
    run_describe(DescribeConfig(provider="world", per_class=2), ctx(tmp_path, traits), out)
    assert out.read_bytes() == first
    assert json.loads((tmp_path / "o.run.json").read_text())["descriptions_file"] == "unchanged"
    run_describe(DescribeConfig(provider="world", per_class=3), ctx(tmp_path, traits), out)
    assert out.read_bytes() != first


def test_description_files_outside_the_tracked_folder_are_flagged(tmp_path, monkeypatch):
    """A describe.file DVC cannot see gets a warning that says how to rerun; one in
    descriptions/ does not."""
    import warnings

    import drm.describe as describe_mod
    from drm import steps
    from drm.config import parse_params

    (tmp_path / "descriptions").mkdir()
    calls = []
    monkeypatch.setattr(describe_mod, "run_describe", lambda cfg, ctx, out: calls.append(cfg.file) or {"a": ["x"]})
    monkeypatch.setattr(steps, "_context", lambda params, base: None)
    for path, flagged in (("d.json", True), ("descriptions/d.json", False)):
        params = parse_params({"describe": {"provider": "file", "file": path}})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            steps.describe(params, base=str(tmp_path), progress=False)
        text = " ".join(str(w.message) for w in caught)
        assert ("dvc repro -f -s describe" in text) is flagged, text
    assert calls == ["d.json", "descriptions/d.json"]
