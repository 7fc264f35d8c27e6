"""The render job schema: defaults, MultiTalk's own format, and every validation rule's message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import soundfile
import yaml

from mt_assets.jobs.decode import load_job_media
from mt_assets.jobs.reader import load_job
from mt_assets.jobs.schema import DEFAULT_NEGATIVE_PROMPT, Apg, JobError, RenderJob, parse_job
from mt_assets_tests.jobs.test_media import speech_like


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    """<tmp>/jobs with an image (64x48), 1 s and 1.5 s speech WAVs; a volume and a folder outside."""
    folder = tmp_path / "jobs"
    folder.mkdir()
    PIL.Image.new("RGB", (64, 48), (120, 90, 60)).save(folder / "multi2.png")
    soundfile.write(folder / "1.wav", speech_like(1.0, f0=130), 16000)
    soundfile.write(folder / "2.wav", speech_like(1.5, f0=210), 16000)
    soundfile.write(folder / "long.wav", speech_like(3.5, f0=170), 16000)
    (tmp_path / "volume" / "media").mkdir(parents=True)
    PIL.Image.new("RGB", (32, 32)).save(tmp_path / "volume" / "media" / "face.png")
    soundfile.write(tmp_path / "volume" / "media" / "a.wav", speech_like(1.0), 16000)
    (tmp_path / "outside").mkdir()
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "outside" / "secret.png")
    return folder


def base(**fields: Any) -> dict[str, Any]:
    """A valid one-speaker job (1 s of audio: 25 audio frames, enough for frames 17)."""
    doc = {
        "prompt": "A man talks.",
        "cond_image": "multi2.png",
        "cond_audio": {"person1": "1.wav"},
        "frames": 17,
    }
    return doc | fields


def parse(jobs: Path, doc: dict[str, Any], **kwargs: Any) -> RenderJob:
    kwargs.setdefault("source", str(jobs / "a1.yaml"))
    return parse_job(doc, base_dir=jobs, volume_root=jobs.parent / "volume", **kwargs)


def refused(jobs: Path, doc: dict[str, Any], field: str, *snippets: str, **kwargs: Any) -> str:
    """Parse `doc`, expect a JobError on `field` whose message holds every snippet; return it."""
    with pytest.raises(JobError) as caught:
        parse(jobs, doc, **kwargs)
    message = str(caught.value)
    assert caught.value.field == field, message
    assert message.startswith(f"render job {kwargs.get('source', jobs / 'a1.yaml')}: field {field!r}: "), (
        message
    )
    for snippet in snippets:
        assert snippet in message, message
    return message


# --- defaults and formats -----------------------------------------------------------------------


def test_defaults_are_generate_multitalk_s(jobs):
    job = parse(
        jobs, {"prompt": "A man talks.", "cond_image": "multi2.png", "cond_audio": {"person1": "long.wav"}}
    )
    assert job.id == "a1"
    assert job.negative_prompt == DEFAULT_NEGATIVE_PROMPT
    assert job.negative_prompt.startswith("bright tones, overexposed") and job.negative_prompt.endswith(
        "backwards"
    )
    assert job.cond_image == str(jobs / "multi2.png")
    assert job.cond_audio == (str(jobs / "long.wav"),)
    assert (job.audio_type, job.bbox, job.mode, job.frames, job.size) == (
        "para",
        None,
        "clip",
        81,
        "multitalk-480",
    )
    assert (job.steps, job.shift, job.text_guidance, job.audio_guidance, job.seed) == (40, 7.0, 5.0, 4.0, 42)
    assert (job.color_correction, job.apg, job.motion_frames, job.rerender) == (1.0, None, 25, False)
    assert job.size_wh is None and job.speakers == 1
    assert job.source == str(jobs / "a1.yaml")


@pytest.mark.parametrize(
    ("size", "shift", "wh"),
    [("multitalk-480", 7.0, None), ("multitalk-720", 11.0, None), ("832x480", 7.0, (832, 480))],
)
def test_shift_default_follows_the_size(jobs, size, shift, wh):
    job = parse(jobs, base(size=size), check_media=False)
    assert (job.shift, job.size_wh) == (shift, wh)
    assert parse(jobs, base(size=size, shift=3), check_media=False).shift == 3.0


def test_multitalk_example_is_accepted_as_is(jobs):
    # MultiTalk's two-person input format, as users write it for generate_multitalk.py --input_json.
    (jobs / "multi2.json").write_text(
        json.dumps(
            {
                "prompt": "In a casual, intimate setting, a man and a woman are talking.",
                "cond_image": "multi2.png",
                "audio_type": "para",
                "cond_audio": {"person1": "1.wav", "person2": "1.wav"},
            }
        )
    )
    job = load_job(jobs / "multi2.json", check_media=False)
    assert job.id == "multi2" and job.audio_type == "para" and job.speakers == 2
    assert job.cond_audio == (str(jobs / "1.wav"), str(jobs / "1.wav"))
    media = load_job_media(parse(jobs, base(cond_audio={"person1": "1.wav", "person2": "1.wav"})))
    assert len(media.audio.speeches) == 2 and len(media.audio.mix) == 16000


def test_yaml_job_with_every_field(jobs):
    (jobs / "scene_7.yml").write_text(
        """
id: scene-7
prompt: Two people talk.
negative_prompt: ""
cond_image: multi2.png
cond_audio: {person1: 1.wav, person2: 2.wav}
audio_type: add
bbox:
  person1: [0, 0, 48, 30]
  person2: [0, 34, 48, 64]
mode: streaming
frames: 33
size: 640x352
steps: 8
shift: 5
text_guidance: 4.5
audio_guidance: 3
seed: 7
color_correction: 0.5
apg: {momentum: -0.5}
motion_frames: 9
rerender: true
"""
    )
    job = load_job(jobs / "scene_7.yml")
    # An empty negative prompt is the default one, as the reference's generate() makes it.
    assert job.id == "scene-7" and job.negative_prompt == DEFAULT_NEGATIVE_PROMPT and job.audio_type == "add"
    assert job.bbox == ((0.0, 0.0, 48.0, 30.0), (0.0, 34.0, 48.0, 64.0))
    assert (job.mode, job.frames, job.size_wh, job.steps, job.shift) == ("streaming", 33, (640, 352), 8, 5.0)
    assert (job.text_guidance, job.audio_guidance, job.seed, job.color_correction) == (4.5, 3.0, 7, 0.5)
    assert job.apg == Apg(momentum=-0.5, norm_threshold=55.0)
    assert (job.motion_frames, job.rerender) == (9, True)
    media = load_job_media(job)
    assert media.image.size == (64, 48)
    assert [len(s) for s in media.audio.speeches] == [40000, 40000]  # 'add': 1 s + 1.5 s each


def test_apg_true_takes_the_reference_defaults(jobs):
    assert parse(jobs, base(apg=True), check_media=False).apg == Apg(-0.75, 55.0)
    assert parse(jobs, base(apg=False), check_media=False).apg is None


def test_volume_references_follow_the_volume_root(jobs):
    doc = base(cond_image="volume:media/face.png", cond_audio={"person1": "volume:media/a.wav"})
    job = parse(jobs, doc)
    volume = jobs.parent / "volume"
    assert job.cond_image == str(volume / "media/face.png")
    assert job.cond_audio == (str(volume / "media/a.wav"),)
    message = refused(
        jobs, base(cond_image="volume:../outside/secret.png"), "cond_image", "outside the volume root"
    )
    assert "'volume:../outside/secret.png'" in message
    with pytest.raises(
        JobError, match=r"field 'cond_image': 'volume:media/face.png': no volume root is configured"
    ):
        parse_job(doc, source="a1.yaml", base_dir=jobs)


def test_s3_references_are_kept_as_uris(jobs):
    doc = base(cond_image="s3://media/in/face.jpg", cond_audio={"person1": "s3://media/in/a.m4a"})
    job = parse(jobs, doc, check_media=False)
    assert (job.cond_image, job.cond_audio) == ("s3://media/in/face.jpg", ("s3://media/in/a.m4a",))
    refused(
        jobs,
        base(cond_image="s3://media"),
        "cond_image",
        "'s3://media': expected s3://bucket/key, with a key",
    )


def test_to_json_round_trips(jobs):
    doc = base(
        cond_audio={"person1": "1.wav", "person2": None},
        audio_type="add",
        bbox={"person1": [1, 2, 30, 40], "person2": [3, 4, 40, 60.5]},
        apg={"norm_threshold": 20},
        size="multitalk-720",
    )
    job = parse(jobs, doc)
    data = json.loads(json.dumps(job.to_json()))
    assert set(data) == set(doc) | {
        "id", "negative_prompt", "mode", "steps", "shift", "text_guidance", "audio_guidance", "seed",
        "color_correction", "motion_frames", "rerender", "teacache", "preset",
    }  # fmt: skip
    assert data["cond_audio"] == {"person1": str(jobs / "1.wav"), "person2": None}
    assert data["apg"] == {"momentum": -0.75, "norm_threshold": 20.0} and data["shift"] == 11.0
    assert parse(jobs, data) == job
    assert parse(jobs, json.loads(json.dumps(parse(jobs, base()).to_json()))) == parse(jobs, base())


def test_check_media_false_does_not_open_files(jobs):
    job = parse(jobs, base(cond_image="absent.png"), check_media=False)
    assert job.cond_image == str(jobs / "absent.png")
    with pytest.raises(JobError, match=r"field 'cond_image': image .*absent.png: no such file"):
        load_job_media(job)


def test_silent_speaker_is_zeros_as_long_as_the_other(jobs):
    job = parse(jobs, base(cond_audio={"person1": "None", "person2": "1.wav"}, audio_type="para"))
    assert job.cond_audio == (None, str(jobs / "1.wav"))
    media = load_job_media(job)
    assert not media.audio.speeches[0].any() and len(media.audio.speeches[0]) == 16000


# --- every rule, by its message -----------------------------------------------------------------


def test_unknown_field_suggests_the_closest(jobs):
    refused(jobs, base(frams=81), "frams", "unknown field; did you mean 'frames'?")
    refused(jobs, base(colour_correction=1), "colour_correction", "did you mean 'color_correction'?")
    refused(jobs, base(zzz=1), "zzz", "unknown field; expected one of id, prompt")


def test_tts_audio_is_not_supported(jobs):
    refused(jobs, base(tts_audio={"text": "hi"}), "tts_audio", "text-to-speech input is not supported")


@pytest.mark.parametrize(
    ("field", "value", "snippet"),
    [
        ("frames", "81", "must be an integer, got a string '81'"),
        ("frames", 81.0, "must be an integer, got a number 81.0"),
        ("steps", True, "must be an integer, got a boolean True"),
        ("seed", None, "must be an integer, got null None"),
        ("shift", "7", "must be a number, got a string '7'"),
        ("text_guidance", float("nan"), "must be a number, got a number nan"),
        ("rerender", "yes", "must be true or false, got a string 'yes'"),
        ("prompt", 5, "must be a string, got an integer 5"),
        ("prompt", "  ", "must not be empty, got '  '"),
        ("negative_prompt", ["a"], "must be a string, got a list ['a']"),
        ("cond_image", 3, "must be a string, got an integer 3"),
        ("size", 480, "must be a string (multitalk-480, multitalk-720 or WxH), got 480"),
        ("apg", "on", "must be true, false or {momentum, norm_threshold}, got 'on'"),
        ("cond_audio", "1.wav", "must be a mapping {person1: <audio>[, person2: <audio>]}, got '1.wav'"),
        ("bbox", [1, 2, 3, 4], "must be a mapping {person1: [x_min, y_min, x_max, y_max], ...}"),
        ("mode", "stream", "'stream' is not one of clip, streaming; did you mean 'streaming'?"),
        ("audio_type", "mix", "'mix' is not one of para, add"),
    ],
)
def test_wrong_types_and_choices_name_field_and_value(jobs, field, value, snippet):
    refused(jobs, base(**{field: value}), field, snippet, check_media=False)


def test_required_fields(jobs):
    for field in ("prompt", "cond_image", "cond_audio"):
        doc = base()
        del doc[field]
        refused(jobs, doc, field, "is required", check_media=False)


def test_id_must_be_short_and_plain(jobs):
    refused(jobs, base(id="a b"), "id", "'a b' must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")
    refused(jobs, base(id="x" * 65), "id", "'" + "x" * 65 + "'")
    refused(jobs, base(id="../x"), "id", "'../x'")
    message = refused(
        jobs, base(), "id", "not given, and the job's name 'my job' is not a valid id", source="my job.json"
    )
    assert message.startswith("render job my job.json: field 'id'")


def test_dict_source_needs_an_id(jobs):
    with pytest.raises(
        JobError, match=r"render job <dict>: field 'id': not given, and the job's name '<dict>'"
    ):
        parse_job(base(), source="<dict>", base_dir=jobs)
    assert parse_job(base(id="x1"), source="<dict>", base_dir=jobs).id == "x1"


def test_paths_escaping_their_roots_are_refused(jobs):
    message = refused(
        jobs,
        base(cond_image="../../etc/passwd"),
        "cond_image",
        "'../../etc/passwd' is outside the allowed roots",
    )
    assert f"(it resolves to {(jobs / '../../etc/passwd').resolve()}); allowed: {jobs}, " in message
    outside = str(jobs.parent / "outside" / "secret.png")
    refused(jobs, base(cond_image=outside), "cond_image", f"'{outside}' is outside the allowed roots")
    assert (
        parse(jobs, base(cond_image=outside), allowed_roots=[jobs.parent / "outside"]).cond_image == outside
    )
    (jobs / "link.png").symlink_to(outside)
    refused(jobs, base(cond_image="link.png"), "cond_image", "'link.png' is outside the allowed roots")
    refused(
        jobs,
        base(cond_audio={"person1": "1.wav", "person2": "../outside/x.wav"}),
        "cond_audio.person2",
        "'../outside/x.wav' is outside the allowed roots",
        check_media=False,
    )


def test_missing_or_undecodable_media(jobs):
    refused(jobs, base(cond_image="absent.png"), "cond_image", f"image {jobs / 'absent.png'}: no such file")
    (jobs / "broken.png").write_bytes(b"not a png")
    refused(
        jobs,
        base(cond_image="broken.png"),
        "cond_image",
        f"image {jobs / 'broken.png'}: not a PNG, JPEG or WebP",
    )
    refused(
        jobs,
        base(cond_audio={"person1": "absent.wav"}),
        "cond_audio.person1",
        f"audio {jobs / 'absent.wav'}: no such file",
    )
    (jobs / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 20)
    refused(
        jobs,
        base(cond_audio={"person1": "broken.wav"}),
        "cond_audio.person1",
        f"audio {jobs / 'broken.wav'}: cannot be decoded",
    )


@pytest.mark.parametrize("mode", ["clip", "streaming"])
def test_audio_must_give_more_frames_than_the_clip(jobs, mode):
    # 1 s of audio gives exactly 25 audio frames: enough for 21 frames, not for 25.
    assert parse(jobs, base(frames=21, mode=mode, motion_frames=5)).frames == 21
    # frames 57 needs 58 audio frames: 58 * 640 = 37120 samples give 57.99999999999999 -> 57 the
    # reference's way, so 37121 samples (2.3200625 s, shown rounded up).
    message = refused(jobs, base(frames=57, mode=mode), "cond_audio", "at least 2.321 s of audio")
    assert "frames 57 needs more than 57" in message
    refused(
        jobs,
        base(frames=25, mode=mode, motion_frames=5),
        "cond_audio",
        f"person1 {jobs / '1.wav'}: 1.000 s of audio gives 25 audio frames at 25 fps",
        "frames 25 needs more than 25, i.e. at least 1.040 s of audio",
    )


def test_add_counts_both_speakers_audio(jobs):
    doc = base(cond_audio={"person1": "1.wav", "person2": "2.wav"}, audio_type="add")
    assert parse(jobs, doc | {"frames": 61}).frames == 61  # 1 s + 1.5 s: int(40000 / 16000 * 25) = 62
    refused(
        jobs,
        doc | {"frames": 65},
        "cond_audio",
        "2.500 s of audio ('add' plays the speakers one after the other)",
    )


def test_para_audio_of_unequal_lengths(jobs):
    refused(
        jobs,
        base(cond_audio={"person1": "1.wav", "person2": "2.wav"}, audio_type="para"),
        "cond_audio",
        f"audio_type 'para' needs both speakers equally long: person1 {jobs / '1.wav'} has 16000 samples",
        f"person2 {jobs / '2.wav'} has 24000",
    )


def test_two_speakers_default_to_para(jobs):
    job = parse(jobs, base(cond_audio={"person1": "1.wav", "person2": "1.wav"}))
    assert job.audio_type == "para"
    assert parse(jobs, base(audio_type="add")).audio_type == "para"  # one speaker: unused


def test_cond_audio_speakers(jobs):
    refused(
        jobs,
        base(cond_audio={"person1": "1.wav", "person3": "1.wav"}),
        "cond_audio.person3",
        "unknown speaker; did you mean",
    )
    refused(
        jobs,
        base(cond_audio={"person2": "1.wav"}),
        "cond_audio",
        "person1 is required, got {'person2': '1.wav'}",
    )
    refused(jobs, base(cond_audio={"person1": None}), "cond_audio", "{'person1': None}: no speaker has audio")
    refused(jobs, base(cond_audio={"person1": "None", "person2": None}), "cond_audio", "no speaker has audio")
    refused(
        jobs, base(cond_audio={"person1": 5}), "cond_audio.person1", "must be a path or URI, got an integer 5"
    )


def test_bbox_must_have_exactly_the_speakers_of_cond_audio(jobs):
    two = {"person1": "1.wav", "person2": "1.wav"}
    refused(
        jobs,
        base(cond_audio=two, bbox={"person1": [0, 0, 10, 10]}),
        "bbox",
        "has person1 but cond_audio has person1 and person2",
    )
    refused(
        jobs,
        base(bbox={"person1": [0, 0, 10, 10], "person2": [0, 0, 10, 10]}),
        "bbox",
        "has person1 and person2 but cond_audio has person1",
    )
    refused(
        jobs, base(bbox={"persn1": [0, 0, 10, 10]}), "bbox.persn1", "unknown speaker; did you mean 'person1'?"
    )
    assert parse(jobs, base(bbox={"person1": [0, 0, 10, 10]})).bbox == ((0.0, 0.0, 10.0, 10.0),)
    assert parse(jobs, base(bbox=None)).bbox is None


@pytest.mark.parametrize(
    ("box", "snippet"),
    [
        ([0, 0, 10], "must be 4 numbers [x_min, y_min, x_max, y_max], got [0, 0, 10]"),
        ([0, 0, 10, "20"], "must be 4 numbers [x_min, y_min, x_max, y_max], got [0, 0, 10, '20']"),
        ([0, 0, 10, True], "got [0, 0, 10, True]"),
        ("0 0 10 10", "got '0 0 10 10'"),
        ([20, 0, 10, 10], "[20, 0, 10, 10]: needs x_min < x_max and y_min < y_max"),
        ([0, 10, 10, 10], "[0, 10, 10, 10]: needs x_min < x_max and y_min < y_max"),
        ([-1, 0, 10, 10], "[-1, 0, 10, 10]: coordinates must not be negative"),
    ],
)
def test_bbox_values(jobs, box, snippet):
    refused(jobs, base(bbox={"person1": box}), "bbox.person1", snippet, check_media=False)


def test_bbox_outside_the_image_names_the_row_column_convention(jobs):
    # The image is 64 wide and 48 high: x counts rows, so x_min 50 is below the last row.
    refused(
        jobs,
        base(bbox={"person1": [50, 0, 60, 30]}),
        "bbox.person1",
        "[50, 0, 60, 30] lies outside the 64x48 image (x counts rows 0..48, y columns 0..64",
    )
    assert parse(
        jobs, base(bbox={"person1": [40, 0, 60, 80]})
    ).bbox  # partly outside: clipped, as the reference


@pytest.mark.parametrize(
    ("field", "value", "snippet"),
    [
        ("frames", 80, "must be 4n+1 (5, 9, ..., 81, ...), got 80"),
        ("frames", 1, "1 is out of range 5..1001"),
        ("frames", 1005, "1005 is out of range 5..1001"),
        ("steps", 0, "0 is out of range 1..1000"),
        ("steps", 1001, "1001 is out of range 1..1000"),
        ("seed", -1, "-1 is out of range 0..4294967295"),
        ("seed", 2**32, "4294967296 is out of range 0..4294967295"),
        ("shift", 0, "0 is out of range (0, 100]"),
        ("text_guidance", -1, "-1 is out of range [0, 100]"),
        ("audio_guidance", 101, "101 is out of range [0, 100]"),
        ("color_correction", 1.5, "1.5 is out of range [0, 1]"),
        ("size", "840x480", "'840x480': width 840 must be a multiple of 16 in 16..2048"),
        ("size", "832x4096", "'832x4096': height 4096 must be a multiple of 16 in 16..2048"),
        ("size", "832x0", "'832x0': height 0 must be a multiple of 16"),
        (
            "size",
            "multitalk-540",
            "'multitalk-540' is not multitalk-480, multitalk-720 or WxH (e.g. 832x480)",
        ),
        ("size", "480p", "'480p' is not multitalk-480, multitalk-720 or WxH"),
        ("motion_frames", 24, "must be 1 mod 4 (1, 5, ..., 25, ...), got 24"),
        ("motion_frames", 0, "0 is out of range 1..1001"),
    ],
)
def test_ranges_name_field_and_value(jobs, field, value, snippet):
    refused(jobs, base(**{field: value}), field, snippet, check_media=False)


def test_motion_frames_must_be_fewer_than_frames_in_streaming_mode(jobs):
    refused(
        jobs,
        base(mode="streaming", frames=17, motion_frames=17),
        "motion_frames",
        "17 must be fewer than frames (17)",
        check_media=False,
    )
    assert parse(jobs, base(frames=17), check_media=False).motion_frames == 25  # clip mode: not used


def test_apg_fields(jobs):
    refused(jobs, base(apg={"momentun": -0.5}), "apg.momentun", "unknown field; did you mean 'momentum'?")
    refused(jobs, base(apg={"momentum": 2}), "apg.momentum", "2 is out of range [-1, 1]")
    refused(jobs, base(apg={"norm_threshold": 0}), "apg.norm_threshold", "0 is out of range (0, 1e+06]")
    refused(
        jobs, base(apg={"norm_threshold": "55"}), "apg.norm_threshold", "must be a number, got a string '55'"
    )


def test_job_files_that_are_not_jobs(jobs):
    (jobs / "a.yaml").write_text("prompt: [unclosed\n")
    with pytest.raises(JobError, match=rf"render job {jobs / 'a.yaml'}: is not valid YAML: "):
        load_job(jobs / "a.yaml")
    (jobs / "b.json").write_text('{"prompt": ')
    with pytest.raises(JobError, match=rf"render job {jobs / 'b.json'}: is not valid JSON: "):
        load_job(jobs / "b.json")
    (jobs / "c.yaml").write_text("- a list\n")
    with pytest.raises(JobError, match=r"c.yaml: expected a mapping of fields, got a list"):
        load_job(jobs / "c.yaml")
    with pytest.raises(JobError, match=r"expected a .yaml, .yml or .json file, got 'd.txt'"):
        load_job(jobs / "d.txt")
    with pytest.raises(JobError, match=r"render job .*absent.yaml: cannot be read: "):
        load_job(jobs / "absent.yaml")
    with pytest.raises(JobError, match=r"field names must be strings, got 1"):
        parse(jobs, {**base(), 1: "x"})


def test_yaml_job_relative_media_come_from_its_own_folder(jobs):
    inbox = jobs / "inbox"
    inbox.mkdir()
    (inbox / "j1.yaml").write_text(
        yaml.safe_dump(base(cond_image="../multi2.png", cond_audio={"person1": "../1.wav"}))
    )
    with pytest.raises(JobError, match=r"'\.\./multi2\.png' is outside the allowed roots"):
        load_job(inbox / "j1.yaml")  # only the job's own folder, unless allowed
    job = load_job(inbox / "j1.yaml", allowed_roots=[jobs])
    assert job.cond_image == str(jobs / "multi2.png") and job.id == "j1"
    (inbox / "j2.yaml").write_text(yaml.safe_dump(base(cond_image="../../outside/secret.png")))
    with pytest.raises(JobError) as caught:
        load_job(inbox / "j2.yaml")
    expected = f"render job {inbox / 'j2.yaml'}: field 'cond_image': '../../outside/secret.png' is outside"
    assert str(caught.value).startswith(expected + " the allowed roots")


def test_load_job_media_prepares_one_speaker(jobs):
    media = load_job_media(parse(jobs, base()))
    assert media.image.mode == "RGB" and media.image.size == (64, 48)
    assert len(media.audio.speeches) == 1 and media.audio.num_frames == 25
    assert media.audio.mix.dtype == np.float32
