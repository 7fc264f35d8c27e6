"""Whole renders on the tiny profile: job file in, an mp4 with sound out, read back by a real decoder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from mt_assets.jobs.outputs import OutputExists
from mt_assets.jobs.reader import load_job
from mt_assets.manifest import load_profile
from mt_assets.models.pipeline import load_pipeline_components
from mt_assets.render.pipeline import MultiTalkRenderer
from mt_assets.render.run import render_job
from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets.volume import LocalVolume
from mt_assets_tests.conftest import CLI, run_cli

# Small enough for 2 CPU cores, large enough that every part runs: 4 latent frames, 3 steps.
TINY_JOB = {"prompt": "A person talks to the camera.", "size": "64x48", "frames": 13, "steps": 3}


@pytest.fixture(scope="module")
def renderer(tiny_volume: Path) -> MultiTalkRenderer:
    return MultiTalkRenderer.from_volume(LocalVolume(tiny_volume), load_profile("tiny"), device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A face, two faces, and three speech tracks (two of 1.0 s, one of 1.6 s)."""
    folder = tmp_path_factory.mktemp("media")
    write_face_image(folder / "face.png", 160, 120)
    write_face_image(folder / "two.png", 200, 100, faces=2, seed=1)
    write_speech(folder / "a.wav", 1.0, pitch=130, seed=1)
    write_speech(folder / "b.wav", 1.0, pitch=210, seed=2)
    write_speech(folder / "long.wav", 1.6, pitch=170, seed=3)
    return folder


def write_job(folder: Path, name: str, **fields: object) -> Path:
    doc = {**TINY_JOB, "cond_image": "face.png", "cond_audio": {"person1": "a.wav"}, **fields}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def render(renderer: MultiTalkRenderer, media: Path, out: Path, name: str, **fields: object):
    job = load_job(write_job(media, name, **fields))
    return render_job(job, renderer, load_profile("tiny"), out)


def decode(path: Path) -> tuple[list[np.ndarray], dict[str, object]]:
    """Every frame as RGB arrays, and the streams' facts, as a player would see them."""
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0]
        facts = {
            "video_codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "fps": float(v.average_rate),
            "audio_codec": a.codec_context.name,
            "audio_seconds": float(a.duration * a.time_base) if a.duration else None,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
        }
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        facts["audio_decoded_seconds"] = samples / container.streams.audio[0].rate
    return frames, facts


def test_a_tiny_render_is_an_h264_aac_mp4_with_the_frames_asked_for(renderer, media, tmp_path) -> None:
    result = render(renderer, media, tmp_path, "one")
    frames, facts = decode(result.output.video)
    assert facts["video_codec"] == "h264" and facts["pix_fmt"] == "yuv420p"
    assert facts["audio_codec"] == "aac"
    assert facts["fps"] == 25
    assert (facts["width"], facts["height"]) == (64, 48)
    assert len(frames) == 13 == result.frames
    # the sound is cut to the video (13 / 25 = 0.52 s), within an AAC frame (1024 samples)
    assert abs(facts["audio_decoded_seconds"] - 13 / 25) <= 1024 / 16000 + 1e-6
    record = json.loads(result.output.job_json.read_text())
    assert record["job"]["seed"] == 42 and record["settings"]["frames"] == 13
    assert record["profile"] == "tiny"
    tiny = load_profile("tiny")
    assert {m["target"]: m["sha256"] for m in record["models"]} == {f.target: f.sha256 for f in tiny.files}
    assert len(record["timings"]["steps"]) == 3 and record["timings"]["stages"]["sampling"] > 0
    assert record["video"]["sha256"] == result.output.sha256
    assert result.output.poster.is_file()


def test_the_same_seed_gives_the_same_frames_and_another_seed_does_not(renderer, media, tmp_path) -> None:
    first, _ = decode(render(renderer, media, tmp_path, "s1").output.video)
    again, _ = decode(render(renderer, media, tmp_path, "s2").output.video)
    other, _ = decode(render(renderer, media, tmp_path, "s3", seed=7).output.video)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(first, other, strict=True)) > 0


def test_a_render_with_the_dit_loading_in_the_background_gives_the_same_frames(
    renderer, media, tiny_volume, tmp_path
) -> None:
    components = load_pipeline_components(
        LocalVolume(tiny_volume), load_profile("tiny"), background=["transformer"]
    )
    background = MultiTalkRenderer(components)
    ours = render(background, media, tmp_path / "bg", "bg")
    theirs = render(renderer, media, tmp_path / "fg", "fg")
    assert not components.pending and components.transformer is not None
    assert "wait_models" in json.loads(ours.output.job_json.read_text())["timings"]["stages"]
    a, _ = decode(ours.output.video)
    b, _ = decode(theirs.output.video)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("audio_type", "bbox"),
    [("para", None), ("para", {"person1": [5, 10, 90, 95], "person2": [5, 105, 90, 190]}), ("add", None)],
)
def test_two_speakers(renderer, media, tmp_path, audio_type: str, bbox) -> None:
    fields: dict[str, object] = {
        "cond_image": "two.png",
        "cond_audio": {"person1": "a.wav", "person2": "b.wav"},
        "audio_type": audio_type,
    }
    if bbox:
        fields["bbox"] = bbox
    result = render(renderer, media, tmp_path, f"two_{audio_type}_{bool(bbox)}", **fields)
    frames, facts = decode(result.output.video)
    assert len(frames) == 13
    record = json.loads(result.output.job_json.read_text())
    assert record["settings"]["speakers"] == 2
    # 'add' plays one speaker after the other: the track is 2.0 s long, 'para' 1.0 s; both cut to the video
    assert abs(facts["audio_decoded_seconds"] - 13 / 25) <= 1024 / 16000 + 1e-6


def test_streaming_renders_the_whole_audio_clip_after_clip(renderer, media, tmp_path) -> None:
    """1.6 s of audio is 40 frames; clips of 13 with 5 motion frames; the reference ends 3 frames early."""
    result = render(
        renderer, media, tmp_path, "stream", mode="streaming", frames=13, motion_frames=5,
        cond_audio={"person1": "long.wav"},
    )  # fmt: skip
    frames, facts = decode(result.output.video)
    assert result.clips > 1
    assert len(frames) == result.frames == int(1.6 * 25) - 3
    assert abs(facts["audio_decoded_seconds"] - len(frames) / 25) <= 1024 / 16000 + 1e-6


def test_an_existing_output_is_refused_unless_the_job_asks_to_rerender(renderer, media, tmp_path) -> None:
    render(renderer, media, tmp_path, "again")
    with pytest.raises(OutputExists, match="rerender: true"):
        render(renderer, media, tmp_path, "again")
    result = render(renderer, media, tmp_path, "again", rerender=True, seed=3)
    assert json.loads(result.output.job_json.read_text())["job"]["seed"] == 3


# ---- the command line ----------------------------------------------------------------------------


def test_cli_renders_a_job_and_prints_one_json_document(tiny_volume, media, tmp_path) -> None:
    job = write_job(media, "cli")
    out = tmp_path / "out"
    done = run_cli(
        "render", str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(out), "--json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["frames"] == 13 and Path(doc["video"]) == out / "cli" / "video.mp4"
    again = run_cli("render", str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(out))
    assert again.returncode == 2 and "rerender: true" in again.stderr


def test_cli_refuses_a_bad_job_with_exit_2_naming_the_field(tiny_volume, media, tmp_path) -> None:
    job = write_job(media, "bad", frames=12)
    done = run_cli(
        "render", str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(tmp_path)
    )
    assert done.returncode == 2
    assert "field 'frames'" in done.stderr and "12" in done.stderr


def test_cli_refuses_an_incomplete_volume_listing_the_files(tmp_path, media) -> None:
    empty = tmp_path / "empty-volume"
    empty.mkdir()
    job = write_job(media, "incomplete")
    done = run_cli("render", str(job), "--profile", "tiny", "--volume", str(empty))
    assert done.returncode == 1
    assert "not complete" in done.stderr
    assert "missing" in done.stderr and "Wan2.1_VAE.pth" in done.stderr
    assert not (empty / "outputs").exists()


def test_a_render_killed_midway_leaves_no_mp4(tiny_volume, media, tmp_path) -> None:
    """SIGKILL while sampling: nothing at the output path; the next run renders it."""
    job = write_job(media, "killed", steps=400)
    out = tmp_path / "out"
    args = [*CLI, "render", str(job), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # the models load in a few seconds; then sampling runs for a while with nothing written yet
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if _cpu_seconds(proc.pid) > 8:
                break
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "killed" / "video.mp4").exists()
    assert not any(out.rglob("*.mp4")) if out.exists() else True
    rerun = write_job(media, "killed", steps=2)
    done = run_cli("render", str(rerun), "--profile", "tiny", "--volume", str(tiny_volume), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert (out / "killed" / "video.mp4").is_file()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_renders_run_without_importing_dagster(tiny_volume) -> None:
    code = "import sys, mt_assets.render.run, mt_assets.render.pipeline; print('dagster' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_bfloat16_render_keeps_the_vae_and_wav2vec2_in_float32(tiny_volume, media, tmp_path) -> None:
    """The GPU path's dtypes, run on the CPU: bf16 DiT, T5 and CLIP; float32 VAE and wav2vec2."""
    import torch

    components = load_pipeline_components(
        LocalVolume(tiny_volume), load_profile("tiny"), dtype=torch.bfloat16
    )
    assert components.transformer.patch_embedding.weight.dtype == torch.bfloat16
    assert next(components.vae.parameters()).dtype == torch.float32
    assert next(components.wav2vec2[1].parameters()).dtype == torch.float32
    bf16 = MultiTalkRenderer(components, dtype=torch.bfloat16)
    result = render(bf16, media, tmp_path, "bf16")
    frames, _ = decode(result.output.video)
    assert len(frames) == 13
    assert json.loads(result.output.job_json.read_text())["renderer"]["dtype"] == "bfloat16"


def test_an_empty_negative_prompt_renders_with_the_default_one_and_records_it(
    renderer, media, tmp_path
) -> None:
    """The reference's generate() replaces "" with the config's negative prompt; so do we."""
    from mt_assets.jobs.schema import DEFAULT_NEGATIVE_PROMPT

    empty = render(renderer, media, tmp_path, "neg-empty", negative_prompt="")
    default = render(renderer, media, tmp_path, "neg-default")
    assert json.loads(empty.output.job_json.read_text())["job"]["negative_prompt"] == DEFAULT_NEGATIVE_PROMPT
    empty_frames, default_frames = decode(empty.output.video)[0], decode(default.output.video)[0]
    assert all(np.array_equal(a, b) for a, b in zip(empty_frames, default_frames, strict=True))
