"""The `mt-assets` command line: exit status, one JSON document, errors that name the input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mt_assets_tests.conftest import SyntheticVolume, manifest_yaml, run_cli


def write_manifest(sv: SyntheticVolume, tmp_path: Path) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(manifest_yaml(sv.files))
    return path


def test_audit_exits_0_when_complete_and_json_is_one_document(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume()
    result = run_cli(
        "audit", "--manifest", str(write_manifest(sv, tmp_path)), "--volume", str(sv.root), "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)  # the whole of stdout is one JSON document
    assert doc["complete"] is True
    assert {(f["component"], f["path"], f["status"]) for f in doc["files"]} == {
        (f.component, f.path, "ok") for f in sv.files
    }
    first = doc["files"][0]
    assert set(first) >= {"component", "path", "status", "size", "expected_size", "sha256"}
    assert first["size"] == first["expected_size"]


def test_audit_exits_1_when_something_is_missing_and_says_what(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume()
    sv.target("a.bin").unlink()
    manifest = write_manifest(sv, tmp_path)
    result = run_cli("audit", "--manifest", str(manifest), "--volume", str(sv.root))
    assert result.returncode == 1
    assert "missing" in result.stdout
    assert "incomplete: 2 of 3 files ok (1 missing)" in result.stdout
    doc = json.loads(run_cli("audit", "--manifest", str(manifest), "--volume", str(sv.root), "--json").stdout)
    assert doc["complete"] is False
    assert doc["totals"]["to_fetch_bytes"] == len(sv.files[0].data)


def test_audit_exits_2_for_a_bad_manifest_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "custom.yaml"
    bad.write_text(
        "profile: x\ncomponents:\n  - name: a\n    repo: o/r\n    revision: main\n    dir: d\n"
        "    files:\n      - {path: ../x, kind: weights}\n"
    )
    result = run_cli("audit", "--manifest", str(bad), "--volume", str(tmp_path))
    assert result.returncode == 2
    assert f"manifest {bad}: component 'a', file #1: field 'path' must not contain '..'" in result.stderr
    assert result.stdout == ""


def test_audit_exits_2_when_the_volume_is_not_a_directory(tmp_path: Path) -> None:
    result = run_cli("audit", "--profile", "multitalk-480p", "--volume", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert f"volume {tmp_path / 'nope'}: no such directory" in result.stderr


def test_audit_of_the_real_profile_on_an_empty_volume_says_nothing_is_there(tmp_path: Path) -> None:
    result = run_cli("audit", "--profile", "multitalk-480p", "--volume", str(tmp_path))
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert "nothing there yet: 25 files, ~92.6 GB needed" in text
    doc = json.loads(
        run_cli("audit", "--profile", "multitalk-480p", "--volume", str(tmp_path), "--json").stdout
    )
    assert {f["status"] for f in doc["files"]} == {"missing"}
    assert len(doc["files"]) == 25


def test_profile_and_manifest_together_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli(
        "audit", "--profile", "multitalk-480p", "--manifest", "x.yaml", "--volume", str(tmp_path)
    )
    assert result.returncode == 2
    assert "give --profile or --manifest, not both" in result.stderr
