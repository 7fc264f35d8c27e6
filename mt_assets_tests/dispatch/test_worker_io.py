"""What a RunPod worker is sent for a queued job (media it can read on its own mount of the volume)
and how its output is checked (video on the volume or in S3, its sha256)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from mt_assets.dispatch import WorkerIOError, check_video, parse_worker_output, progress_text, worker_input
from mt_assets.jobs.queue import JobQueue
from mt_assets.jobs.schema import parse_job
from mt_assets.tiny.samples import write_face_image, write_speech

SHA = "ab" * 32


@pytest.fixture
def queued(tmp_path: Path) -> tuple[JobQueue, str]:
    """A job dropped as a folder with its media, accepted: media copied into jobs/media/<id>/."""
    root = tmp_path / "volume"
    queue = JobQueue(root, settle_seconds=0)
    folder = queue.folder("inbox") / "a1"
    write_face_image(folder / "face.png", 64, 48)
    write_speech(folder / "speech.wav", 1.0)
    doc = {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": {"person1": "speech.wav"}}
    (folder / "job.yaml").write_text(yaml.safe_dump({**doc, "frames": 13}))
    [accepted] = queue.scan_inbox().accepted
    return queue, accepted.id


def test_a_queued_jobs_media_travel_as_volume_refs_the_worker_resolves_on_its_own_mount(
    queued, tmp_path
) -> None:
    queue, job_id = queued
    job = queue.load(job_id)
    assert Path(job.cond_image).is_absolute()  # as loaded here: this machine's mount
    sent = worker_input(job.to_json(), queue.root)
    assert sent["cond_image"] == f"volume:jobs/media/{job_id}/face.png"
    assert sent["cond_audio"] == {"person1": f"volume:jobs/media/{job_id}/speech.wav"}
    assert sent["return_video"] == "volume" and "output_s3" not in sent
    assert {k: v for k, v in sent.items() if k not in ("cond_image", "cond_audio", "return_video")} == {
        k: v for k, v in job.to_json().items() if k not in ("cond_image", "cond_audio")
    }

    # The worker sees the same volume elsewhere (/runpod-volume): the job parses and its media decode there.
    mount = tmp_path / "runpod-volume"
    shutil.copytree(queue.root, mount)
    settings = {k: v for k, v in sent.items() if k not in ("return_video", "output_s3")}
    there = parse_job(settings, source="<runpod input>", base_dir=mount, volume_root=mount)
    assert there.cond_image == str(mount / "jobs" / "media" / job_id / "face.png")
    assert there.to_json() | {"cond_image": None, "cond_audio": None} == job.to_json() | {
        "cond_image": None,
        "cond_audio": None,
    }


def test_with_an_output_bucket_the_worker_is_asked_to_upload_there(queued) -> None:
    queue, job_id = queued
    sent = worker_input(queue.load(job_id).to_json(), queue.root, output_s3="s3://renders/batch-7")
    assert sent["return_video"] == "s3" and sent["output_s3"] == "s3://renders/batch-7"
    with pytest.raises(WorkerIOError, match="MT_OUTPUT_S3: expected s3://bucket/prefix"):
        worker_input(queue.load(job_id).to_json(), queue.root, output_s3="renders/batch-7")


def test_s3_and_volume_refs_stay_and_a_path_off_the_volume_is_refused_naming_the_field(tmp_path) -> None:
    root = tmp_path / "volume"
    root.mkdir()
    doc = {
        "id": "b2",
        "cond_image": "s3://in/face.png",
        "cond_audio": {"person1": "volume:media/a.wav", "person2": None},
    }
    sent = worker_input(doc, root)
    assert sent["cond_image"] == "s3://in/face.png"
    assert sent["cond_audio"] == {"person1": "volume:media/a.wav", "person2": None}
    with pytest.raises(
        WorkerIOError, match=r"render job b2: field 'cond_audio.person1': .*/elsewhere/a.wav is neither"
    ):
        worker_input({**doc, "cond_audio": {"person1": str(tmp_path / "elsewhere" / "a.wav")}}, root)


def test_a_video_on_the_volume_is_found_on_this_machines_mount_and_re_hashed(tmp_path) -> None:
    root = tmp_path / "volume"
    video = root / "outputs" / "c3" / "video.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"not really an mp4")
    sha = hashlib.sha256(video.read_bytes()).hexdigest()
    for ref in ("volume:outputs/c3/video.mp4", "outputs/c3/video.mp4", str(video)):
        output = {"id": "c3", "video": {"path": ref}, "poster": {"path": "volume:outputs/c3/poster.png"}}
        out = parse_worker_output({**output, "sha256": sha, "frames": 13}, root, job_id="c3")
        assert out.video_path == video.resolve() and out.on_volume and out.fields == {"frames": 13}
        assert out.files == {"poster": video.resolve().with_name("poster.png")}
        check_video(out)
    out = parse_worker_output(
        {"video": {"path": "volume:outputs/c3/video.mp4"}, "sha256": SHA}, root, job_id="c3"
    )
    with pytest.raises(WorkerIOError, match=r"sha256 is .*, the worker returned abababababab"):
        check_video(out)
    video.unlink()
    with pytest.raises(WorkerIOError, match="cannot be read on this machine's volume"):
        check_video(out)


def test_a_video_in_s3_or_on_the_workers_own_mount_is_recorded_as_given(tmp_path) -> None:
    root = tmp_path / "volume"
    out = parse_worker_output(
        {"video": {"s3": "s3://renders/c3/video.mp4"}, "poster": "s3://renders/c3/poster.png", "sha256": SHA},
        root,
        job_id="c3",
    )
    assert out.video == "s3://renders/c3/video.mp4" and out.video_path is None
    assert out.files == {"poster": "s3://renders/c3/poster.png"}
    check_video(out)  # nothing to re-hash here
    out = parse_worker_output(
        {"video": "/runpod-volume/outputs/c3/video.mp4", "sha256": SHA}, root, job_id="c3"
    )
    assert out.video_path == Path("/runpod-volume/outputs/c3/video.mp4") and not out.on_volume
    check_video(out)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("done", "expected a JSON object, got str"),
        ({"video": {"s3": "s3://b/k"}}, "field 'sha256' must be 64 lowercase hex"),
        ({"video": {"s3": "s3://b/k"}, "sha256": SHA, "id": "other"}, "field 'id' is 'other', expected 'c3'"),
        ({"sha256": SHA}, "no field 'video'"),
        ({"video": {"s3": "https://b/k"}, "sha256": SHA}, "field 'video.s3' must be an s3:// URI"),
        ({"video": {"path": "volume:../../etc/passwd"}, "sha256": SHA}, "leads out of the volume"),
    ],
)
def test_an_output_that_breaks_the_contract_is_refused_naming_the_field(tmp_path, output, message) -> None:
    with pytest.raises(WorkerIOError, match=message):
        parse_worker_output(output, tmp_path, job_id="c3")


def workers_response(job_id: str, sha: str, **extra: object) -> dict[str, object]:
    """What mt_assets.worker returns: RenderResult.to_json() on its mount, plus how the video went."""
    there = f"/runpod-volume/outputs/{job_id}"
    return {
        "id": job_id,
        "video": f"{there}/video.mp4",
        "poster": f"{there}/poster.png",
        "job_json": f"{there}/job.json",
        "sha256": sha,
        "frames": 13,
        "seconds": 2.0,
        "reused": False,
        "return_video": "volume",
        "media": {"cond_image": "volume:jobs/media/x/face.png"},
        **extra,
    }


def test_the_workers_own_response_is_found_on_this_machines_mount_of_the_same_volume(tmp_path) -> None:
    root = tmp_path / "volume"
    video = root / "outputs" / "d4" / "video.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"mp4 bytes")
    (video.parent / "poster.png").write_bytes(b"png")
    sha = hashlib.sha256(b"mp4 bytes").hexdigest()
    out = parse_worker_output(workers_response("d4", sha), root, job_id="d4")
    assert out.video_path == video and out.on_volume and out.video_s3 is None
    assert out.files["poster"] == video.with_name("poster.png")
    assert out.files["job_json"] == Path("/runpod-volume/outputs/d4/job.json")  # not here: as given
    assert out.fields["frames"] == 13 and out.fields["reused"] is False and "media" in out.fields
    check_video(out)

    uploaded = {"video": "s3://renders/d4/video.mp4", "poster": "s3://renders/d4/poster.png"}
    out = parse_worker_output(workers_response("d4", sha, return_video="s3", s3=uploaded), root, job_id="d4")
    assert out.video == "s3://renders/d4/video.mp4" and out.video_path == video and out.on_volume
    assert out.files["poster"] == "s3://renders/d4/poster.png"
    check_video(out)  # the copy the worker left on the volume is re-hashed too

    elsewhere = parse_worker_output(workers_response("e5", SHA), root, job_id="e5")
    assert elsewhere.video_path == Path("/runpod-volume/outputs/e5/video.mp4") and not elsewhere.on_volume
    with pytest.raises(WorkerIOError, match=r"field 's3\.video' must be an s3:// URI"):
        parse_worker_output(workers_response("d4", sha, s3={"video": "/tmp/v.mp4"}), root, job_id="d4")


def test_progress_updates_read_as_steps() -> None:
    assert (
        progress_text({"stage": "sampling", "step": 3, "steps": 40, "clip": 1, "clips": 1})
        == "sampling step 3/40"
    )
    assert progress_text({"stage": "sampling", "step": 50, "steps": 120, "clip": 2, "clips": 3}) == (
        "sampling step 50/120, clip 2/3"
    )
    assert progress_text("loading models") == "loading models"
    assert progress_text({"phase": "upload"}) == '{"phase": "upload"}'
