"""Careless and hostile input (issue 20): a retry with other media, and references that carry secrets.

A job retried with the same id is answered from its finished output only when it is the same job:
its media are compared by content (sha256 against job.json's `media`), not by path. And no message
or log line shows a URL's query string or a data: URI's payload.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from mt_assets.tiny.samples import write_face_image, write_speech
from mt_assets.worker.environment import WorkerSettings
from mt_assets.worker.handler import handle
from mt_assets.worker.startup import Worker, startup
from mt_assets_tests.worker.conftest import SIGNATURE, tiny_job

JOB_ID = "retried"
IMAGE = "volume:media/retry/face.png"
AUDIO = "volume:media/retry/a.wav"


@pytest.fixture(scope="module")
def worker(worker_volume: Path) -> Worker:
    media = worker_volume / "media"
    (media / "retry").mkdir()
    shutil.copy(media / "face.png", media / "retry" / "face.png")
    shutil.copy(media / "a.wav", media / "retry" / "a.wav")
    return startup(WorkerSettings(volume=str(worker_volume), profile="tiny", device="cpu"))


@pytest.fixture(scope="module")
def rendered(worker: Worker) -> dict:
    response = handle({"id": JOB_ID, "input": retry_job()}, worker)
    assert "error" not in response, response
    assert response["reused"] is False
    return response


def retry_job(**fields: object) -> dict[str, object]:
    return tiny_job(**{"id": JOB_ID, "cond_image": IMAGE, "cond_audio": {"person1": AUDIO}, **fields})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def other_speech(tmp_path: Path) -> bytes:
    return write_speech(tmp_path / "other.wav", 1.0, pitch=220, seed=2).read_bytes()


def refusal(worker: Worker, field: str, before: str, now: str) -> str:
    return (
        f"render job runpod:{JOB_ID}: field '{field}': output {worker.outputs / JOB_ID} exists from a job "
        f"with the same id and {field} sha256 {before[:12]}… (this job: {now[:12]}…); give another id, or "
        "set rerender: true to replace it"
    )


# --- a retry with other media ---------------------------------------------------------------------


def test_the_record_holds_the_sha256_and_size_of_each_medium(worker: Worker, rendered: dict) -> None:
    media = worker.volume.root / "media" / "retry"
    record = json.loads(Path(rendered["job_json"]).read_text())
    assert record["media"] == {
        "cond_image": {"sha256": sha256(media / "face.png"), "size": (media / "face.png").stat().st_size},
        "cond_audio": {
            "person1": {"sha256": sha256(media / "a.wav"), "size": (media / "a.wav").stat().st_size}
        },
    }


def test_another_path_to_other_bytes_is_refused_naming_the_field(worker: Worker, rendered: dict) -> None:
    other = write_face_image(worker.volume.root / "media" / "retry-other" / "face.png", 160, 120, seed=3)
    response = handle(
        {"id": JOB_ID, "input": retry_job(cond_image="volume:media/retry-other/face.png")}, worker
    )
    before = sha256(worker.volume.root / "media" / "retry" / "face.png")
    assert response == {"error": refusal(worker, "cond_image", before, sha256(other))}


def test_another_data_payload_is_refused_naming_the_field(
    worker: Worker, rendered: dict, tmp_path: Path
) -> None:
    other = other_speech(tmp_path)
    job = retry_job(cond_audio={"person1": data_uri("audio/wav", other)})
    response = handle({"id": JOB_ID, "input": job}, worker)
    before = sha256(worker.volume.root / "media" / "retry" / "a.wav")
    assert response == {
        "error": refusal(worker, "cond_audio.person1", before, hashlib.sha256(other).hexdigest())
    }


def test_new_bytes_at_the_same_path_are_refused_naming_the_field(
    worker: Worker, rendered: dict, tmp_path: Path
) -> None:
    audio = worker.volume.root / "media" / "retry" / "a.wav"
    original = audio.read_bytes()
    video = Path(rendered["video"])
    written = video.stat().st_mtime_ns
    try:
        audio.write_bytes(other_speech(tmp_path))
        response = handle({"id": JOB_ID, "input": retry_job()}, worker)
        expected = refusal(worker, "cond_audio.person1", hashlib.sha256(original).hexdigest(), sha256(audio))
    finally:
        audio.write_bytes(original)
    assert response == {"error": expected}
    assert video.stat().st_mtime_ns == written  # nothing rendered, nothing replaced


@pytest.mark.parametrize("given_as", ["another volume path", "a data: URI"])
def test_the_same_bytes_given_another_way_are_the_same_job(
    worker: Worker, rendered: dict, given_as: str
) -> None:
    retry = worker.volume.root / "media" / "retry"
    if given_as == "a data: URI":
        job = retry_job(
            cond_image=data_uri("image/png", (retry / "face.png").read_bytes()),
            cond_audio={"person1": data_uri("audio/wav", (retry / "a.wav").read_bytes())},
        )
    else:
        copies = worker.volume.root / "media" / "copies"
        copies.mkdir(exist_ok=True)
        shutil.copy(retry / "face.png", copies / "portrait.png")
        shutil.copy(retry / "a.wav", copies / "speech.wav")
        job = retry_job(
            cond_image="volume:media/copies/portrait.png", cond_audio={"person1": "media/copies/speech.wav"}
        )
    updates: list[dict] = []
    again = handle({"id": JOB_ID, "input": job}, worker, notify=updates.append)
    assert again["reused"] is True, again
    assert (again["sha256"], again["video"]) == (rendered["sha256"], rendered["video"]) and updates == []


def test_a_retry_with_other_settings_is_refused_before_its_media_are_fetched(
    worker: Worker, rendered
) -> None:
    # Nothing listens on port 9: had the URL been fetched, the error would be about cond_image.
    job = retry_job(seed=7, cond_image="https://127.0.0.1:9/face.png")
    assert "field 'seed': output " in handle({"id": JOB_ID, "input": job}, worker)["error"]


def test_a_render_whose_record_has_no_media_hashes_is_not_reused(worker: Worker, rendered: dict) -> None:
    older = worker.outputs / "older"
    shutil.copytree(worker.outputs / JOB_ID, older)
    record = json.loads((older / "job.json").read_text())
    record["job"]["id"] = "older"
    del record["media"]  # as renders from before media were recorded
    (older / "job.json").write_text(json.dumps(record))
    response = handle({"id": "older", "input": retry_job(id="older")}, worker)
    assert response == {
        "error": f"render job runpod:older: output {older} exists from a job with the same id, but its "
        "job.json records no sha256 of its media (an older render), so this job's media cannot be "
        "compared with them; give another id, or set rerender: true to replace it"
    }


# --- references shown without their secrets -------------------------------------------------------


@pytest.mark.parametrize(
    ("output_s3", "shown"),
    [
        (f"s3://renders/worker?{SIGNATURE}&X-Amz-Expires=60", "'s3://renders/worker?…'"),
        (
            f"https://renders.s3.amazonaws.com/worker/?{SIGNATURE}",
            "'https://renders.s3.amazonaws.com/worker/?…'",
        ),
        (f"https://key:{SIGNATURE}@renders.example/worker", "'https://***@renders.example/worker'"),
    ],
)
def test_an_output_s3_mismatch_never_shows_a_signature(
    worker: Worker, caplog: pytest.LogCaptureFixture, output_s3: str, shown: str
) -> None:
    with_bucket = dataclasses.replace(
        worker, settings=dataclasses.replace(worker.settings, output_s3="s3://renders/worker")
    )
    caplog.set_level(logging.INFO, logger="mt_assets.worker")
    response = handle({"id": "signed", "input": tiny_job(output_s3=output_s3)}, with_bucket)
    assert response["error"].startswith(
        f"render job runpod:signed: field 'output_s3': {shown}: this worker uploads to its own "
        "MT_OUTPUT_S3 only (s3://renders/worker)"
    )
    assert caplog.records and SIGNATURE not in caplog.text
    assert "deadbeef" not in response["error"] and "deadbeef" not in caplog.text


@pytest.mark.parametrize("field", ["output_s3", "cond_image"])
def test_a_data_uri_is_never_echoed_whole(
    worker: Worker, caplog: pytest.LogCaptureFixture, tmp_path: Path, field: str
) -> None:
    payload = base64.b64encode(other_speech(tmp_path)).decode()
    ref = f"data:image/png;base64,{payload}"  # a wav's bytes: cond_image cannot decode them
    caplog.set_level(logging.INFO, logger="mt_assets.worker")
    job = tiny_job(**{field: ref})
    response = handle({"id": f"data-{field.replace('_', '-')}", "input": job}, worker)
    assert f"field '{field}'" in response["error"]
    assert caplog.records
    for text in (response["error"], caplog.text):
        assert payload[:16] not in text and payload[-16:] not in text
