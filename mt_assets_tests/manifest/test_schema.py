"""Every validation rule of the manifest format, with the exact message a user sees."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from mt_assets.manifest import ManifestError, load_manifest, parse_manifest

SHA = "ab" * 32


def base() -> dict[str, Any]:
    return {
        "profile": "custom",
        "components": [
            {
                "name": "wav2vec2",
                "repo": "TencentGameMate/chinese-wav2vec2-base",
                "revision": "refs/pr/1",
                "dir": "chinese-wav2vec2-base",
                "files": [
                    {"path": "config.json", "kind": "config"},
                    {"path": "preprocessor_config.json", "kind": "processor", "git_sha1": "c" * 40},
                    {"path": "model.safetensors", "kind": "weights", "size": 380, "sha256": SHA},
                ],
            },
            {
                "name": "vae",
                "repo": "Wan-AI/Wan2.1-I2V-14B-480P",
                "revision": "6b73f84e66371cdfe870c72acd6826e1d61cf279",
                "dir": "Wan2.1-I2V-14B-480P",
                "files": [{"path": "Wan2.1_VAE.pth", "kind": "weights", "size": 5, "sha256": SHA}],
            },
        ],
    }


def parse(doc: dict[str, Any]) -> Any:
    return parse_manifest(yaml.safe_dump(doc), "profiles/custom.yaml")


def error_for(edit: Any) -> str:
    doc = copy.deepcopy(base())
    edit(doc)
    with pytest.raises(ManifestError) as info:
        parse(doc)
    return str(info.value)


def set_file(index: int, field: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc["components"][0]["files"][index - 1][field] = value

    return edit


def test_valid_manifest_parses_with_targets_and_pins() -> None:
    m = parse(base())
    assert m.profile == "custom"
    assert [f.target for f in m.files] == [
        "models/chinese-wav2vec2-base/config.json",
        "models/chinese-wav2vec2-base/preprocessor_config.json",
        "models/chinese-wav2vec2-base/model.safetensors",
        "models/Wan2.1-I2V-14B-480P/Wan2.1_VAE.pth",
    ]
    assert [f.pinned for f in m.files] == [False, True, True, True]
    assert not m.component("wav2vec2").locked
    assert m.component("vae").locked


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/etc/passwd", "field 'path' must be relative, not absolute, got '/etc/passwd'"),
        ("C:/x.bin", "field 'path' must be relative, not absolute, got 'C:/x.bin'"),
        ("../../etc/passwd", "field 'path' must not contain '..', got '../../etc/passwd'"),
        ("a/../b", "field 'path' must not contain '..', got 'a/../b'"),
        ("a\\b.bin", "field 'path' must use '/' separators, not backslashes, got 'a\\\\b.bin'"),
        ("a\x00b", "field 'path' must not contain a NUL character, got 'a\\x00b'"),
        ("a//b", "field 'path' must not contain empty or '.' segments, got 'a//b'"),
        ("./a", "field 'path' must not contain empty or '.' segments, got './a'"),
        ("", "field 'path' must not be empty, got ''"),
    ],
)
def test_unsafe_paths_are_refused(value: str, message: str) -> None:
    assert error_for(set_file(3, "path", value)) == (
        f"manifest profiles/custom.yaml: component 'wav2vec2', file #3: {message}"
    )


def test_unsafe_dir_is_refused() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["components"][1]["dir"] = "../outside"

    assert (
        error_for(edit)
        == "manifest profiles/custom.yaml: component 'vae': field 'dir' must not contain '..', got '../outside'"
    )


def test_duplicate_target_names_both_places() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["components"][1]["dir"] = "chinese-wav2vec2-base"
        doc["components"][1]["files"][0]["path"] = "model.safetensors"

    assert error_for(edit) == (
        "manifest profiles/custom.yaml: component 'vae', file #1: field 'path': target "
        "models/chinese-wav2vec2-base/model.safetensors is already declared by component 'wav2vec2', file #3"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sha256", "a" * 63, "field 'sha256' must be 64 hex characters, got 63"),
        ("sha256", "a" * 65, "field 'sha256' must be 64 hex characters, got 65"),
        ("sha256", "g" * 64, "field 'sha256' must be lowercase hex (0-9, a-f), got '" + "g" * 64 + "'"),
        ("sha256", "A" * 64, "field 'sha256' must be lowercase hex (0-9, a-f), got '" + "A" * 64 + "'"),
        ("git_sha1", "c" * 39, "field 'git_sha1' must be 40 hex characters, got 39"),
        ("sha256", 12, "field 'sha256' must be a string of 64 hex characters, got a number (12)"),
        ("size", -1, "field 'size' must not be negative, got -1"),
        ("size", "big", "field 'size' must be a whole number of bytes, got a string ('big')"),
        ("size", 1.5, "field 'size' must be a whole number of bytes, got a number (1.5)"),
        ("size", True, "field 'size' must be a whole number of bytes, got a boolean (true)"),
        ("estimated_size", -5, "field 'estimated_size' must not be negative, got -5"),
        ("kind", "model", "field 'kind' must be one of weights, tokenizer, processor, config, got 'model'"),
        (
            "sha265",
            SHA,
            "unknown field 'sha265' (known: path, size, sha256, git_sha1, kind, estimated_size); did you mean 'sha256'?",
        ),
    ],
)
def test_bad_file_fields_are_named(field: str, value: Any, message: str) -> None:
    assert (
        error_for(set_file(3, field, value))
        == f"manifest profiles/custom.yaml: component 'wav2vec2', file #3: {message}"
    )


def test_missing_required_file_field() -> None:
    def edit(doc: dict[str, Any]) -> None:
        del doc["components"][0]["files"][1]["kind"]

    assert (
        error_for(edit)
        == "manifest profiles/custom.yaml: component 'wav2vec2', file #2: field 'kind' is required"
    )


def test_duplicate_component_names() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["components"][1]["name"] = "wav2vec2"

    assert (
        error_for(edit)
        == "manifest profiles/custom.yaml: component #2: field 'name': duplicate component name 'wav2vec2'"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Wav2Vec2", "component #1: field 'name' must match [a-z0-9_-]+, got 'Wav2Vec2'"),
        (
            "repo",
            "no-slash",
            "component 'wav2vec2': field 'repo' must look like 'owner/name', got 'no-slash'",
        ),
        (
            "revision",
            "abc1234",
            "component 'wav2vec2': field 'revision' looks like a commit but has 7 hex characters; a commit has 40",
        ),
        (
            "revision",
            "main branch",
            "component 'wav2vec2': field 'revision' must be a 40-hex commit or a ref name, got 'main branch'",
        ),
        ("files", [], "component 'wav2vec2': field 'files' must be a non-empty list"),
        (
            "url",
            "x",
            "component 'wav2vec2': unknown field 'url' (known: name, repo, revision, dir, files, lora_scale, quantized)",
        ),
    ],
)
def test_bad_component_fields_are_named(field: str, value: Any, message: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["components"][0][field] = value

    assert error_for(edit) == f"manifest profiles/custom.yaml: {message}"


def test_unknown_top_level_field() -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["profiles"] = "x"

    assert error_for(edit) == (
        "manifest profiles/custom.yaml: unknown field 'profiles' (known: profile, extends, drop, presets, components, bundles); did you mean 'profile'?"
    )


def test_empty_components_and_non_mapping_document() -> None:
    assert error_for(lambda d: d.update(components=[])) == (
        "manifest profiles/custom.yaml: field 'components' must be a non-empty list"
    )
    with pytest.raises(ManifestError, match=r"^manifest x.yaml: the document must be a mapping, got a list$"):
        parse_manifest("- a\n- b\n", "x.yaml")


def test_invalid_yaml_names_line_and_column() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest("profile: x\ncomponents: [\n  - {name: a\n", "broken.yaml")
    assert str(info.value).startswith("manifest broken.yaml: not valid YAML at line ")


def test_unreadable_manifest_file(tmp_path: Any) -> None:
    with pytest.raises(ManifestError, match=r"^manifest .*nope.yaml: no such file$"):
        load_manifest(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match=r"cannot be read"):
        load_manifest(binary)


def bundle_error(bundle: dict[str, Any]) -> str:
    return error_for(lambda d: d.update(bundles=[bundle]))


def test_bundles_take_the_non_weights_files_of_their_folder() -> None:
    doc = base()
    doc["bundles"] = [{"name": "w2v", "loader": "feature_extractor", "component": "wav2vec2"}]
    [bundle] = parse(doc).bundles
    assert [f.path for f in bundle.files] == ["config.json", "preprocessor_config.json"]
    assert bundle.location == "models/chinese-wav2vec2-base"


@pytest.mark.parametrize(
    ("bundle", "message"),
    [
        (
            {"name": "b", "loader": "pickle", "component": "vae"},
            "bundle 'b': field 'loader' must be one of tokenizer, feature_extractor, got 'pickle'",
        ),
        (
            {"name": "b", "loader": "tokenizer", "component": "t5"},
            "bundle 'b': field 'component': no component 't5' (known: wav2vec2, vae)",
        ),
        (
            {"name": "b", "loader": "tokenizer", "component": "vae"},
            "bundle 'b': no tokenizer, processor or config files of component 'vae' under ''",
        ),
        (
            {"name": "b", "loader": "tokenizer", "component": "wav2vec2", "folder": "../x"},
            "bundle 'b': field 'folder' must not contain '..', got '../x'",
        ),
        (
            {"name": "b", "loader": "tokenizer", "component": "wav2vec2", "path": "x"},
            "bundle 'b': unknown field 'path' (known: name, loader, component, folder)",
        ),
    ],
)
def test_bad_bundles_are_named(bundle: dict[str, Any], message: str) -> None:
    assert bundle_error(bundle) == f"manifest profiles/custom.yaml: {message}"


# ---- drop and quantized components (extends) -------------------------------------------------------
def quant_doc(**top: Any) -> dict[str, Any]:
    """An add-on of multitalk-480p that drops its float DiT and T5 for quantized ones."""
    return {
        "profile": "custom",
        "extends": "multitalk-480p",
        "drop": ["wan-dit", "multitalk", "t5"],
        "components": [
            {
                "name": "wan-dit",
                "repo": "Wan-AI/Wan2.1-I2V-14B-480P",
                "revision": "main",
                "dir": "Wan2.1-I2V-14B-480P",
                "files": [{"path": "config.json", "kind": "config"}],
            },
            {
                "name": "dit-int8",
                "quantized": "transformer",
                "repo": "MeiGen-AI/MeiGen-MultiTalk",
                "revision": "main",
                "dir": "MeiGen-MultiTalk",
                "files": [
                    {"path": "quant_models/dit_model_int8.safetensors", "kind": "weights"},
                    {"path": "quant_models/dit_model_map_int8.json", "kind": "config"},
                ],
            },
        ],
        **top,
    }


def quant_error(doc: dict[str, Any]) -> str:
    with pytest.raises(ManifestError) as info:
        parse(doc)
    return str(info.value)


def test_drop_removes_base_components_and_a_dropped_name_may_be_declared_again() -> None:
    m = parse(quant_doc())
    names = [c.name for c in m.components]
    assert "multitalk" not in names and "t5" not in names and names.count("wan-dit") == 1
    assert [f.path for f in m.component("wan-dit").files] == ["config.json"]
    assert m.dropped == ("multitalk", "t5", "wan-dit")
    assert m.quantized("transformer").name == "dit-int8" and m.quantized("t5") is None
    weights, qmap = m.quantized("transformer").quant_files
    assert (weights.kind, qmap.path) == ("weights", "quant_models/dit_model_map_int8.json")
    assert {b.name for b in m.bundles} == {"t5-tokenizer", "clip-tokenizer", "wav2vec2-processor"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d.pop("extends"),
            "field 'drop' needs 'extends': it removes components of the base profile",
        ),
        (
            lambda d: d.update(drop="t5"),
            "field 'drop' must be a non-empty list of component names, got a string ('t5')",
        ),
        (
            lambda d: d.update(drop=["wan-dit", "t6"]),
            "field 'drop': profile multitalk-480p has no component 't6' (known: wan-dit, t5, t5-tokenizer",
        ),
        (
            lambda d: d.update(drop=["t5"]),
            "component #1: field 'name': duplicate component name 'wan-dit'",
        ),
        (
            lambda d: d["components"][1].update(quantized="vae"),
            "component 'dit-int8': field 'quantized' must be one of transformer, t5, got 'vae'",
        ),
        (
            lambda d: d["components"][1]["files"].pop(),
            "component 'dit-int8': field 'quantized': a quantized component has exactly one weights file "
            "(.safetensors, the quantized state dict) and one config file (.json, its quantization map), "
            "got quant_models/dit_model_int8.safetensors (weights)",
        ),
        (
            lambda d: d["components"][1].update(lora_scale=1.0),
            "component 'dit-int8': fields 'quantized' and 'lora_scale' exclude each other",
        ),
        (
            lambda d: d["components"].append(
                {**copy.deepcopy(d["components"][1]), "name": "dit-fp8", "dir": "MeiGen-MultiTalk-fp8"}
            ),
            "field 'quantized': component 'dit-int8' already holds the quantized transformer",
        ),
    ],
)
def test_bad_drop_and_quantized_fields_are_named(edit: Any, message: str) -> None:
    doc = quant_doc()
    edit(doc)
    assert message in quant_error(doc)


def test_a_lora_on_a_profile_with_a_quantized_dit_is_refused_with_the_premerged_alternative() -> None:
    doc = quant_doc()
    doc["components"].append(
        {
            "name": "lora-fusionx",
            "lora_scale": 1.0,
            "repo": "vrgamedevgirl84/Wan14BT2VFusioniX",
            "revision": "main",
            "dir": "Wan14BT2VFusioniX",
            "files": [{"path": "FusionX_LoRa/Wan2.1_I2V_14B_FusionX_LoRA.safetensors", "kind": "weights"}],
        }
    )
    message = quant_error(doc)
    assert "component 'lora-fusionx': field 'lora_scale': the DiT of this profile is quantized" in message
    assert "quant_model_int8_FusionX.safetensors" in message


def test_a_dropped_components_bundle_goes_with_it_or_is_made_again_from_its_replacement() -> None:
    from mt_assets.manifest import load_profile

    gone = parse(quant_doc(drop=["wan-dit", "multitalk", "t5", "wav2vec2"]))
    assert "wav2vec2-processor" not in {b.name for b in gone.bundles}
    base = load_profile("multitalk-480p").component("t5-tokenizer")
    replaced_doc = quant_doc(drop=["wan-dit", "multitalk", "t5", "t5-tokenizer"])
    replaced_doc["components"].append(
        {
            "name": "t5-tokenizer",
            "repo": base.repo,
            "revision": "main",
            "dir": "umt5-elsewhere",
            "files": [{"path": f.path, "kind": f.kind} for f in base.files],
        }
    )
    [bundle] = [b for b in parse(replaced_doc).bundles if b.name == "t5-tokenizer"]
    assert bundle.location == "models/umt5-elsewhere/google/umt5-xxl"
    assert {f.revision for f in bundle.files} == {"main"}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: d["components"][0]["files"].append(
                {"path": "diffusion_pytorch_model-00001-of-00007.safetensors", "kind": "weights"}
            ),
            "component 'wan-dit': the DiT of profile custom is quantized (component 'dit-int8'), so only "
            "its config.json is read; it declares diffusion_pytorch_model-00001-of-00007.safetensors: "
            "drop wan-dit and declare it again with config.json only",
        ),
        (
            lambda d: (d.update(drop=["t5"]), d["components"].pop(0)),
            "component 'wan-dit': the DiT of profile custom is quantized (component 'dit-int8'), so only "
            "its config.json is read; it declares diffusion_pytorch_model.safetensors.index.json and 7 other "
            "files: drop wan-dit",
        ),
        (
            lambda d: d.update(drop=["wan-dit", "t5"]),
            "component 'multitalk': the DiT of profile custom is quantized (component 'dit-int8') and "
            "holds the adapter, so multitalk is never read: drop it",
        ),
        (
            lambda d: d["components"].pop(0),
            "field 'components': the DiT of profile custom is quantized (component 'dit-int8') and is "
            "built from the config.json of a 'wan-dit' component",
        ),
        (
            lambda d: (
                d.update(drop=["wan-dit", "multitalk"]),
                d["components"].append(
                    {
                        "name": "t5-int8",
                        "quantized": "t5",
                        "repo": "MeiGen-AI/MeiGen-MultiTalk",
                        "revision": "main",
                        "dir": "MeiGen-MultiTalk",
                        "files": [
                            {"path": "quant_models/t5_int8.safetensors", "kind": "weights"},
                            {"path": "quant_models/t5_map_int8.json", "kind": "config"},
                        ],
                    }
                ),
            ),
            "component 't5': the T5 of profile custom is quantized (component 't5-int8'), so the float t5 "
            "is never read: drop it",
        ),
    ],
)
def test_a_quantized_profile_that_keeps_float_files_it_never_reads_is_refused(
    edit: Any, message: str
) -> None:
    """The loader reads every file of `unit_components`: a quantized unit's float files must be dropped."""
    doc = quant_doc()
    edit(doc)
    assert message in quant_error(doc)


def test_every_shipped_quantized_profile_declares_only_what_its_load_reads() -> None:
    from mt_assets.manifest import load_profile
    from mt_assets.models.pipeline import loaded_components

    for name in ("multitalk-480p-int8", "multitalk-480p-int8-fusionx", "multitalk-480p-fp8-fusionx"):
        m = load_profile(name)
        assert [f.path for f in m.component("wan-dit").files] == ["config.json"]
        assert not {"multitalk", "t5"} & loaded_components(m)
