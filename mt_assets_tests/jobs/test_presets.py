"""Job settings for fast renders: `teacache` and `preset`, and the refusal of a preset a profile does not serve."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import PIL.Image
import pytest
import soundfile

from mt_assets.jobs.schema import PRESETS, JobError, TeaCacheSettings, check_preset_served, parse_job
from mt_assets.manifest import PRESETS as MANIFEST_PRESETS
from mt_assets.manifest import load_profile
from mt_assets_tests.jobs.test_media import speech_like
from mt_assets_tests.jobs.test_schema import base, parse, refused


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    """<tmp>/jobs with the image and the 1 s speech `base()` names."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    PIL.Image.new("RGB", (64, 48), (120, 90, 60)).save(folder / "multi2.png")
    soundfile.write(folder / "1.wav", speech_like(1.0, f0=130), 16000)
    (tmp_path / "volume").mkdir()
    return folder


def test_the_job_presets_are_the_ones_a_manifest_may_declare() -> None:
    assert tuple(PRESETS) == MANIFEST_PRESETS


def test_teacache_is_off_by_default_true_means_threshold_0_2_and_a_threshold_may_be_given(jobs) -> None:
    assert parse(jobs, base()).teacache is None
    assert parse(jobs, base(teacache=False)).teacache is None
    assert parse(jobs, base(teacache=True)).teacache == TeaCacheSettings(0.2)
    assert parse(jobs, base(teacache={"threshold": 0.3})).teacache == TeaCacheSettings(0.3)
    assert parse(jobs, base(teacache={})).teacache == TeaCacheSettings(0.2)


@pytest.mark.parametrize(
    ("value", "field", "snippet"),
    [
        ({"threshold": 0}, "teacache.threshold", "out of range (0,"),
        ({"threshold": -1}, "teacache.threshold", "out of range (0,"),
        ({"threshold": "high"}, "teacache.threshold", "must be a number"),
        ({"thresh": 0.2}, "teacache.thresh", "did you mean 'threshold'?"),
        ("yes", "teacache", "must be true, false or {threshold}"),
        (0.2, "teacache", "must be true, false or {threshold}"),
    ],
)
def test_a_bad_teacache_setting_is_refused_naming_the_field(jobs, value, field, snippet) -> None:
    refused(jobs, base(teacache=value), field, snippet)


def test_fusionx_gives_8_steps_text_guidance_1_audio_guidance_2_shift_2(jobs) -> None:
    job = parse(jobs, base(preset="fusionx"))
    assert (job.preset, job.steps, job.text_guidance, job.audio_guidance, job.shift) == (
        "fusionx",
        8,
        1.0,
        2.0,
        2.0,
    )
    light = parse(jobs, base(preset="lightx2v", size="multitalk-720"))
    assert (light.steps, light.text_guidance, light.audio_guidance, light.shift) == (4, 1.0, 2.0, 2.0)


def test_fields_the_job_gives_win_over_its_preset(jobs) -> None:
    job = parse(jobs, base(preset="fusionx", steps=10, shift=5, audio_guidance=3.0, text_guidance=2.0))
    assert (job.steps, job.shift, job.audio_guidance, job.text_guidance) == (10, 5.0, 3.0, 2.0)


def test_an_unknown_preset_is_refused_with_a_suggestion(jobs) -> None:
    refused(
        jobs,
        base(preset="fusion"),
        "preset",
        "'fusion' is not one of fusionx, lightx2v",
        "did you mean 'fusionx'?",
    )
    refused(jobs, base(preset=["fusionx"]), "preset", "is not one of fusionx, lightx2v")


def test_to_json_records_the_effective_settings_and_the_preset_and_round_trips(jobs) -> None:
    job = parse(jobs, base(preset="lightx2v", steps=6, teacache={"threshold": 0.25}))
    data = json.loads(json.dumps(job.to_json()))
    assert data["preset"] == "lightx2v" and data["teacache"] == {"threshold": 0.25}
    assert (data["steps"], data["text_guidance"], data["audio_guidance"], data["shift"]) == (6, 1.0, 2.0, 2.0)
    again = parse_job(data, source=job.source, base_dir=Path("/"), check_media=False)
    assert again == job
    plain = parse(jobs, base())
    data = json.loads(json.dumps(plain.to_json()))
    assert data["preset"] is None and data["teacache"] is False
    assert parse_job(data, source=plain.source, base_dir=Path("/"), check_media=False) == plain


def test_a_preset_the_profile_does_not_serve_is_refused_naming_it_and_the_profiles_that_serve_it(
    jobs,
) -> None:
    job = parse(jobs, base(preset="fusionx"))
    tiny = load_profile("tiny")
    with pytest.raises(JobError) as caught:
        check_preset_served(job, tiny.profile, tiny.presets)
    message = str(caught.value)
    assert caught.value.field == "preset"
    assert "'fusionx' is not served by profile 'tiny'" in message
    assert "serves it" in message
    served = dataclasses.replace(tiny, presets=("fusionx",))
    check_preset_served(job, served.profile, served.presets)  # no error
    check_preset_served(parse(jobs, base()), tiny.profile, tiny.presets)  # no preset: any profile


# ---- the inbox ---------------------------------------------------------------------------------


def test_the_inbox_of_a_profile_rejects_a_preset_it_does_not_serve_with_the_reason(tmp_path: Path) -> None:
    from mt_assets.jobs.queue import JobQueue
    from mt_assets_tests.jobs.test_queue import drop_folder, job_doc

    volume = tmp_path / "volume"
    tiny = load_profile("tiny")
    queue = JobQueue(volume, settle_seconds=0, stable_seconds=0, manifest=tiny)
    drop_folder(queue, "fast", job_doc(preset="fusionx"))
    drop_folder(queue, "plain", job_doc())
    scan = queue.scan_inbox()
    assert [a.id for a in scan.accepted] == ["plain"]
    [rejected] = scan.rejected
    assert rejected.name == "fast"
    assert (
        "field 'preset'" in rejected.error and "'fusionx' is not served by profile 'tiny'" in rejected.error
    )
    assert "'fusionx' is not served" in (queue.folder("rejected") / "fast.error.txt").read_text()

    served = JobQueue(
        volume, settle_seconds=0, stable_seconds=0, manifest=dataclasses.replace(tiny, presets=("fusionx",))
    )
    drop_folder(served, "fast2", job_doc(preset="fusionx"))
    assert [a.id for a in served.scan_inbox().accepted] == ["fast2"]


def test_a_queue_that_knows_no_profile_accepts_any_preset(tmp_path: Path) -> None:
    """`mt-assets jobs submit` has no --profile: it leaves the preset to the scanner, which knows the profile."""
    from mt_assets.jobs.queue import JobQueue
    from mt_assets_tests.jobs.test_queue import drop_folder, job_doc

    queue = JobQueue(tmp_path / "volume", settle_seconds=0, stable_seconds=0)
    drop_folder(queue, "fast", job_doc(preset="lightx2v", teacache=True))
    [accepted] = queue.scan_inbox().accepted
    assert accepted.job.preset == "lightx2v" and accepted.job.steps == 4 and accepted.job.teacache is not None
