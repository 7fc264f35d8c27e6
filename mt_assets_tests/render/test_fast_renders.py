"""Fast renders on the tiny profile: the fusionx and lightx2v presets, TeaCache, and what a job costs.

The tiny profile serves no preset yet (its LoRA twins are separate profiles): the renders here use
it with `presets` added (`dataclasses.replace`), the same files. On the tiny random weights TeaCache's
distances are 10^3-10^6, so a threshold that skips is chosen large here (real weights' thresholds,
0.2-0.3, mean nothing on them); which calls it skips is then the warm-up rule's, not a guess about
real weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mt_assets.jobs.reader import load_job
from mt_assets.manifest import PROFILES_DIR, load_profile
from mt_assets.render.pipeline import MultiTalkRenderer
from mt_assets.render.run import render_job
from mt_assets.render.teacache import RET_STEPS
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import run_cli
from mt_assets_tests.render.test_render import TINY_JOB, decode

SKIPPING = 1e9  # above any sum of the tiny weights' rescaled distances: every call after the warm-up skips


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face and two speech tracks (1.0 s and 1.6 s)."""
    folder = tmp_path_factory.mktemp("media")
    write_face_image(folder / "face.png", 160, 120)
    write_speech(folder / "a.wav", 1.0, pitch=130, seed=1)
    write_speech(folder / "long.wav", 1.6, pitch=170, seed=3)
    return folder


@pytest.fixture(scope="module")
def serving():
    """The tiny profile as one that serves both presets (the same files)."""
    return dataclasses.replace(load_profile("tiny"), presets=("fusionx", "lightx2v"))


@pytest.fixture(scope="module")
def renderer(tiny_volume: Path, serving) -> MultiTalkRenderer:
    return MultiTalkRenderer.from_volume(LocalVolume(tiny_volume), serving, device="cpu")


def write_job(folder: Path, name: str, **fields: object) -> Path:
    """TINY_JOB, minus the settings a preset gives when the job names one (None drops a field)."""
    doc = {**TINY_JOB, "cond_image": "face.png", "cond_audio": {"person1": "a.wav"}, **fields}
    if "preset" in fields and "steps" not in fields:
        del doc["steps"]
    doc = {k: v for k, v in doc.items() if v is not None}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def render(renderer, serving, media: Path, out: Path, name: str, **fields: object):
    result = render_job(load_job(write_job(media, name, **fields)), renderer, serving, out)
    return result, json.loads(result.output.job_json.read_text())


def assert_decodes(result, frames: int = 13) -> list[np.ndarray]:
    decoded, facts = decode(result.output.video)
    assert facts["video_codec"] == "h264" and facts["audio_codec"] == "aac"
    assert len(decoded) == frames == result.frames
    return decoded


@pytest.mark.parametrize(("preset", "steps"), [("fusionx", 8), ("lightx2v", 4)])
def test_a_preset_render_decodes_and_records_its_settings_and_evaluations(
    renderer, serving, media, tmp_path, preset: str, steps: int
) -> None:
    result, record = render(renderer, serving, media, tmp_path, preset, preset=preset)
    assert_decodes(result)
    job = record["job"]
    assert (job["preset"], job["steps"], job["text_guidance"], job["audio_guidance"], job["shift"]) == (
        preset, steps, 1.0, 2.0, 2.0,
    )  # fmt: skip
    # text guidance 1.0: 2 evaluations per step; one clip
    assert record["dit_evaluations_planned"] == record["dit_evaluations_run"] == steps * 2
    assert record["dit_evaluations_skipped"] == 0
    assert len(record["timings"]["steps"]) == steps


def test_a_render_without_teacache_runs_every_evaluation(renderer, serving, media, tmp_path) -> None:
    _, record = render(renderer, serving, media, tmp_path, "plain")
    assert record["job"]["teacache"] is False and record["job"]["preset"] is None
    assert (record["dit_evaluations_planned"], record["dit_evaluations_run"], record["dit_evaluations_skipped"]) == (
        3 * 3, 3 * 3, 0,
    )  # fmt: skip


def test_a_teacache_render_decodes_skips_what_it_planned_and_the_same_seed_gives_the_same_frames(
    renderer, serving, media, tmp_path
) -> None:
    fields = {"steps": 8, "teacache": {"threshold": SKIPPING}}  # 24 calls: 15 warm-up, 9 skipped
    first, record = render(renderer, serving, media, tmp_path, "tea1", **fields)
    again, record2 = render(renderer, serving, media, tmp_path, "tea2", **fields)
    a, b = assert_decodes(first), assert_decodes(again)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # each job starts fresh
    assert record["job"]["teacache"] == {"threshold": SKIPPING}
    assert record["dit_evaluations_skipped"] == 8 * 3 - RET_STEPS
    assert record["dit_evaluations_run"] == record["dit_evaluations_planned"] == RET_STEPS
    assert {k: record2[k] for k in record2 if k.startswith("dit_")} == {
        k: record[k] for k in record if k.startswith("dit_")
    }
    plain, _ = render(renderer, serving, media, tmp_path, "tea-off", steps=8)
    c = assert_decodes(plain)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))  # the skips changed the video


def test_teacache_in_streaming_starts_every_clip_fresh(renderer, serving, media, tmp_path) -> None:
    result, record = render(
        renderer, serving, media, tmp_path, "tea-stream", mode="streaming", motion_frames=5, steps=6,
        cond_audio={"person1": "long.wav"}, teacache={"threshold": SKIPPING},
    )  # fmt: skip
    assert result.clips > 1
    assert_decodes(result, frames=int(1.6 * 25) - 3)
    # 18 calls per clip: 15 warm-up, 3 skipped, in every clip
    assert record["dit_evaluations_skipped"] == result.clips * 3
    assert record["dit_evaluations_run"] == record["dit_evaluations_planned"] == result.clips * RET_STEPS


# ---- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's YAML with `presets: [fusionx]`: a manifest file for --manifest."""
    path = tmp_path_factory.mktemp("manifest") / "tiny-serving.yaml"
    path.write_text((PROFILES_DIR / "tiny.yaml").read_text() + "\npresets: [fusionx]\n")
    return path


def cli(*args: str):
    return run_cli("render", *args)


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("dry-tea", {"steps": 7, "teacache": {"threshold": SKIPPING}}),  # 21 calls: 6 skipped
        ("dry-fusionx", {"preset": "fusionx"}),
    ],
)
def test_dry_run_says_what_the_render_then_runs(
    tiny_volume, media, serving_manifest, tmp_path, name, fields
) -> None:
    job = write_job(media, name, **fields)
    where = ["--manifest", str(serving_manifest), "--volume", str(tiny_volume)]
    dry = cli(str(job), *where, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert not (tiny_volume / "outputs" / name).exists() and not (tmp_path / name).exists()
    done = cli(str(job), *where, "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / name / "job.json").read_text())
    printed = json.loads(done.stdout)  # `render --json` prints the same counts
    assert {k: printed[k] for k in printed if k.startswith("dit_")} == {
        k: record[k] for k in record if k.startswith("dit_")
    }
    assert (
        plan["dit_evaluations_planned"] == record["dit_evaluations_run"] == record["dit_evaluations_planned"]
    )
    assert plan["dit_evaluations_skipped"] == record["dit_evaluations_skipped"]
    assert (plan["clips"], plan["frames_per_clip"]) == (1, 13)
    if "preset" in fields:
        assert (plan["steps"], plan["evaluations_per_step"], plan["teacache"]) == (8, 2, False)
        assert record["dit_evaluations_planned"] == 16  # 8 steps x 2 per clip
    else:
        assert plan["dit_evaluations_skipped"] == 7 * 3 - RET_STEPS
        assert plan["teacache"]["skipped_calls"] == list(range(RET_STEPS, 7 * 3))


def test_dry_run_without_teacache_needs_no_model(media, serving_manifest, tmp_path) -> None:
    """An empty volume: nothing to load, nothing audited; the plan all the same."""
    empty = tmp_path / "empty"
    empty.mkdir()
    job = write_job(
        media,
        "dry-empty",
        preset="fusionx",
        mode="streaming",
        motion_frames=5,
        cond_audio={"person1": "long.wav"},
    )
    dry = cli(str(job), "--manifest", str(serving_manifest), "--volume", str(empty), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["clips"] > 1 and plan["dit_evaluations_planned"] == plan["clips"] * 16
    assert plan["dit_evaluations_skipped"] == 0


def test_cli_refuses_a_preset_the_profile_does_not_serve_with_exit_2_naming_it(
    tiny_volume, media, tmp_path
) -> None:
    job = write_job(media, "unserved", preset="fusionx")
    done = cli(str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "field 'preset': 'fusionx' is not served by profile 'tiny'" in done.stderr
    assert "serves it" in done.stderr
    assert not (tmp_path / "unserved").exists()


def test_dry_run_without_json_says_the_cost_in_one_line_and_what_to_run_next(
    media, serving_manifest, tmp_path
) -> None:
    job = write_job(media, "dry-text", preset="fusionx")
    dry = cli(str(job), "--manifest", str(serving_manifest), "--volume", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert (
        lines[0]
        == "dry-text: 1 clip(s) of 13 frames, 8 steps x 2 DiT evaluations per step: 16 DiT evaluations"
    )
    assert lines[1].startswith("next: mt-assets render ") and f"--manifest {serving_manifest}" in lines[1]


# ---- the shipped LoRA twins ----------------------------------------------------------------------


def test_a_fusionx_render_on_tiny_fusionx_merges_its_lora_and_runs_16_evaluations_per_clip(
    tiny_fusionx_volume, media, tmp_path
) -> None:
    job = write_job(media, "twin-fusionx", preset="fusionx", teacache=True)
    where = ["--profile", "tiny-fusionx", "--volume", str(tiny_fusionx_volume)]
    dry = cli(str(job), *where, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    done = cli(str(job), *where, "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "twin-fusionx" / "job.json").read_text())
    assert record["profile"] == "tiny-fusionx" and record["job"]["preset"] == "fusionx"
    # 8 steps x 2: all 16 calls fall in TeaCache's warm-up (15 calls) but the last, which 0.2 cannot skip here
    assert record["dit_evaluations_planned"] == record["dit_evaluations_run"] == 16
    assert record["dit_evaluations_skipped"] == 0
    plan = json.loads(dry.stdout)
    assert (plan["dit_evaluations_planned"], plan["dit_evaluations_skipped"]) == (16, 0)
    assert any("lora" in m["component"] for m in record["models"])


def test_the_refusal_names_the_shipped_profiles_that_serve_the_preset(tiny_volume, media, tmp_path) -> None:
    job = write_job(media, "unserved-light", preset="lightx2v")
    done = cli(str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "'lightx2v' is not served by profile 'tiny'" in done.stderr
    assert "multitalk-480p-lightx2v" in done.stderr and "tiny-lightx2v" in done.stderr
