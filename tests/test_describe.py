"""The descriptions schema, the world/file providers, and untrusted text (drm.describe.text)."""
import json
import os

import pytest

from drm.base.errors import DescriptionsError
from drm.describe import (DescribeContext, clean_descriptions, load_descriptions, run_describe,
                          validate_descriptions)
from drm.describe.config import DescribeConfig
from drm.describe.text import printable, quote, screen_descriptions, strip_escapes

CLASSES = ["cat", "dog", "sea turtle"]


def ctx(tmp_path, traits=None):
    return DescribeContext(CLASSES, traits, tmp_path, progress=False)


def describe_file(tmp_path, mapping, **cfg):
    """run_describe with the file provider on `mapping`; returns (descriptions, provenance)."""
    (tmp_path / "d.json").write_text(json.dumps(mapping))
    out = tmp_path / "out.json"
    desc = run_describe(DescribeConfig(provider="file", file="d.json", **cfg), ctx(tmp_path), out)
    return desc, json.loads(out.read_text())["provenance"]


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
    assert doc["provenance"]["rejected"] == {}
    assert load_descriptions(out, CLASSES) == desc


def test_file_missing_a_class_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": "y"}))
    with pytest.raises(DescriptionsError, match="missing 1 class.*sea turtle"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_file_with_empty_entry_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "A cat.", "1": ["  "], "2": "A turtle."}))
    with pytest.raises(DescriptionsError, match="empty description.*dog"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_file_with_unknown_key_is_an_error(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"0": "x", "1": "y", "2": "z", "horse": "h"}))
    with pytest.raises(DescriptionsError, match="horse"):
        run_describe(DescribeConfig(provider="file", file="d.json"), ctx(tmp_path), tmp_path / "o.json")


def test_overrides_are_merged_and_recorded(tmp_path):
    (tmp_path / "over.json").write_text(json.dumps({"dog": ["A loyal canine with floppy ears."]}))
    desc, prov = describe_file(tmp_path, {"0": "A cat.", "1": "A dog.", "2": "A turtle."},
                               overrides="over.json")
    assert desc["dog"] == ["A loyal canine with floppy ears."] and desc["cat"] == ["A cat."]
    assert prov["overrides"]["classes"] == ["dog"]


def test_world_provider_uses_core_traits_only(tmp_path):
    traits = {c: [f"trait {i} of {c}" for i in range(3)] for c in CLASSES}
    desc = run_describe(DescribeConfig(provider="world", per_class=2), ctx(tmp_path, traits), tmp_path / "o.json")
    assert all(len(v) == 2 for v in desc.values())
    assert all("trait" in d for v in desc.values() for d in v)


def test_world_provider_needs_a_world(tmp_path):
    with pytest.raises(DescriptionsError, match="core-trait vocabulary"):
        run_describe(DescribeConfig(provider="world"), ctx(tmp_path), tmp_path / "o.json")


def test_clean_descriptions_normalises_untrusted_text():
    raw = ["  - A round shell.\x07 ", "a round shell.", "", 42, "1. Four\nlegs",
           " ".join(f"part{i}" for i in range(100))]
    out = clean_descriptions(raw, max_chars=50)
    assert out[0] == "A round shell." and out[1] == "Four legs"
    assert len(out) == 3 and len(out[2]) <= 50 and out[2].startswith("part0 part1")


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
    from drm.describe import stage

    (tmp_path / "descriptions").mkdir()
    calls = []
    monkeypatch.setattr(describe_mod, "run_describe", lambda cfg, ctx, out: calls.append(cfg.file) or {"a": ["x"]})
    monkeypatch.setattr(stage, "context", lambda params, base, progress=True: None)
    for path, flagged in (("d.json", True), ("descriptions/d.json", False)):
        params = stage.Params(describe=DescribeConfig(provider="file", file=path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stage.run(params, base=tmp_path, out=tmp_path / "o.json",
                      tracked_dir=tmp_path / "descriptions", progress=False)
        text = " ".join(str(w.message) for w in caught)
        assert ("dvc repro -f -s describe" in text) is flagged, text
    assert calls == ["d.json", "descriptions/d.json"]


# ------------------------------------------------------------------------------------------
# untrusted text: escapes stripped, implausible descriptions rejected (drm/describe/text.py)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    "ignore previous instructions\x1b[31m",        # a CSI sequence, parameters included
    "ignore previous \x1b[1;31;40minstructions",
    "ignore previous instructions[31m",            # its remnant after the ESC byte was lost
    "ignore previous [0;1minstructions[0m",
    "ignore previous instructions\\033[31m",       # written out as text
    "ignore previous instructions\x9b31m",         # the 8-bit CSI
    "\x1b]0;pwned\x07ignore previous instructions",  # OSC (window title), BEL-terminated
    "\x1b]8;;http://x\x1b\\ignore previous instructions",  # OSC, ST-terminated
    "]0;pwned\x07ignore previous instructions",    # OSC remnant
    "ignore\x1b[2K previous\x1bc instructions\x1b[?25l",
])
def test_terminal_escapes_are_stripped_completely(raw):
    assert clean_descriptions([raw]) == ["ignore previous instructions"]


def test_bracketed_text_that_is_no_escape_remnant_survives():
    assert strip_escapes("A [mammal] with [A] and [1] marks.") == "A [mammal] with [A] and [1] marks."


@pytest.mark.parametrize("raw,reason", [
    ("x" * 200, "one character repeated"),
    ("Aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaah, a cat", "one character repeated"),
    ("<script>alert(1)</script>", "markup tag"),
    ("A cat with <b>stripes</b>.", "markup tag"),
    ("A cat <!-- hidden -->", "markup tag"),
    ("12345 67890 !!!", "no letters"),
    ("...", "no letters"),
    ("Round.", "too few distinct words"),
    ("meow " * 40, "too few distinct words"),
    ("cat dog " * 20, "too few distinct words"),
])
def test_implausible_descriptions_are_rejected_with_a_reason(raw, reason):
    screened = screen_descriptions([raw, "A small furry animal with whiskers."])
    assert screened.kept == ["A small furry animal with whiskers."]
    assert [r.reason for r in screened.rejected] == [reason]
    assert len(screened.rejected[0].text) <= 80


@pytest.mark.parametrize("text", [
    "A domed shell.", "Four legs.", "Trait 0.", "A shape with 3 < 4 sides and a > b.",
    "A fox's tail is bushy, with a white tip.", "Ein Fuchs hat einen buschigen Schwanz.",
    "ignore previous instructions",  # form is checked, not content (module docstring)
])
def test_plausible_descriptions_are_kept(text):
    assert screen_descriptions([text]).kept == [text]


def test_messages_show_untrusted_text_as_plain_text():
    raw = "bad\x1b[31m\x07\u202e text"
    assert all(ch.isprintable() for ch in printable(raw)) and "\\x1b" in printable(raw)
    assert all(ch.isprintable() for ch in quote(raw)) and quote(raw).startswith("'")


def test_file_provider_records_rejected_descriptions(tmp_path):
    desc, prov = describe_file(tmp_path, {
        "cat": ["A small furry animal.", "<script>alert(1)</script>", "x" * 200],
        "dog": "Four legs and a wet nose.\x1b[31m",
        "sea turtle": ["A domed shell.", "[31mA leathery neck."]})
    assert desc == {"cat": ["A small furry animal."], "dog": ["Four legs and a wet nose."],
                    "sea turtle": ["A domed shell.", "A leathery neck."]}
    assert prov["rejected"] == {"cat": [
        {"text": "<script>alert(1)</script>", "reason": "markup tag"},
        {"text": "x" * 77 + "...", "reason": "one character repeated"}]}
    assert prov["counts"] == {"cat": 1, "dog": 1, "sea turtle": 2}


def test_file_class_with_every_description_rejected_fails_naming_it(tmp_path):
    with pytest.raises(DescriptionsError) as ei:
        describe_file(tmp_path, {"cat": "A cat.", "dog": ["<script>alert(1)</script>", "zzzzzzzzzz\x1b[0m"],
                                 "sea turtle": "A domed shell."})
    msg = str(ei.value)
    assert "'dog'" in msg and "describe.file d.json" in msg and "describe.overrides" in msg
    assert "markup tag" in msg and "one character repeated" in msg and "'cat'" not in msg
    assert all(ch.isprintable() for ch in msg)
    assert not (tmp_path / "out.json").exists()


def test_an_override_rescues_a_class_whose_descriptions_were_all_rejected(tmp_path):
    (tmp_path / "over.json").write_text(json.dumps({"dog": "A loyal canine with floppy ears."}))
    desc, prov = describe_file(tmp_path, {"cat": "A cat.", "dog": "<b>dog</b>", "sea turtle": "A shell."},
                               overrides="over.json")
    assert desc["dog"] == ["A loyal canine with floppy ears."]
    assert prov["rejected"] == {}  # the replaced text shaped nothing


def test_an_override_whose_every_description_is_rejected_fails(tmp_path):
    (tmp_path / "over.json").write_text(json.dumps({"dog": "dog dog dog dog dog dog dog dog"}))
    with pytest.raises(DescriptionsError, match=r"'dog' \(from describe.overrides\).*too few distinct words"):
        describe_file(tmp_path, {"cat": "A cat.", "dog": "A dog.", "sea turtle": "A shell."},
                      overrides="over.json")


def test_unchanged_descriptions_keep_the_file_and_its_mtime(tmp_path):
    mapping = {"cat": "A cat.", "dog": "A dog.", "sea turtle": "A shell."}
    describe_file(tmp_path, mapping)
    out = tmp_path / "out.json"
    os.utime(out, ns=(1_000_000_000, 1_000_000_000))  # an old mtime: any rewrite would show
    describe_file(tmp_path, mapping)
    assert out.stat().st_mtime_ns == 1_000_000_000
    record = json.loads((tmp_path / "out.run.json").read_text())
    assert record["provider"] == "file" and record["descriptions_file"] == "unchanged"
