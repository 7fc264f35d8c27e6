"""The acceptance test: the RunPod SDK's local API server running `python -m mt_assets.worker`.

One server for the module (start-up loads the tiny models once), on a copy of the tiny volume, with
moto_server on loopback as S3 (media in, videos out: MT_OUTPUT_S3) and a recorder standing in for
RunPod's progress webhook. The server's environment holds AWS keys and an HF token; the last test
checks that none of them, nor a URL's signature, appears in any response or in the server's logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mt_assets_tests.s3_server import put_tree, s3_client, s3_server
from mt_assets_tests.worker.conftest import SECRETS, SIGNATURE, tiny_job, video_frames, worker_env
from mt_assets_tests.worker.runpod_api import LocalApi, ProgressRecorder, local_api

OUTPUT_S3 = "s3://renders/worker"


@dataclass
class Server:
    api: LocalApi
    volume: Path
    s3: str  # the endpoint
    progress: ProgressRecorder


@pytest.fixture(scope="module")
def server(worker_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with s3_server() as endpoint, ProgressRecorder() as progress:
        put_tree(endpoint, "renders", "", {})
        put_tree(
            endpoint,
            "media",
            "in",
            {
                "face.png": (worker_volume / "media" / "face.png").read_bytes(),
                "a.wav": (worker_volume / "media" / "a.wav").read_bytes(),
            },
        )
        env = worker_env(
            worker_volume,
            MT_OUTPUT_S3=OUTPUT_S3,
            AWS_ENDPOINT_URL=endpoint,
            RUNPOD_WEBHOOK_POST_OUTPUT=progress.template,
        )
        with local_api(env, tmp_path_factory.mktemp("worker-api")) as api:
            yield Server(api, worker_volume, endpoint, progress)


def test_runsync_renders_a_tiny_job_returned_as_base64_and_kept_on_the_volume(server: Server) -> None:
    answer = server.api.runsync(tiny_job(id="acceptance", return_video="base64"))
    assert answer["status"] == "COMPLETED", answer
    out = answer["output"]
    mp4 = base64.b64decode(out["video_base64"])
    on_volume = server.volume / "outputs" / "acceptance" / "video.mp4"
    assert Path(out["video"]) == on_volume and on_volume.read_bytes() == mp4
    assert out["sha256"] == hashlib.sha256(mp4).hexdigest()
    assert video_frames(on_volume) == (17, 128, 96)
    assert (out["frames"], out["width"], out["height"], out["reused"]) == (17, 128, 96, False)
    assert out["return_video"] == "base64" and out["stages"]["sampling"] > 0 and out["seconds"] > 0
    record = json.loads((on_volume.parent / "job.json").read_text())
    assert record["video"]["sha256"] == out["sha256"] and record["job"]["steps"] == 4
    # one progress update per sampling step, through the SDK's progress_update
    updates = server.progress.outputs(answer["id"], wait_for=4)
    assert sorted(u["step"] for u in updates) == [1, 2, 3, 4]
    assert all(u["stage"] == "sampling" and u["steps"] == 4 for u in updates)


def test_the_same_job_delivered_again_returns_the_first_output_without_rendering(server: Server) -> None:
    video = server.volume / "outputs" / "acceptance" / "video.mp4"
    before = video.stat().st_mtime_ns
    first = json.loads((video.parent / "job.json").read_text())
    again = server.api.runsync(tiny_job(id="acceptance", return_video="base64"))
    assert again["status"] == "COMPLETED", again
    out = again["output"]
    assert out["reused"] is True and out["sha256"] == first["video"]["sha256"]
    assert base64.b64decode(out["video_base64"]) == video.read_bytes()
    assert video.stat().st_mtime_ns == before  # not written again
    assert out["seconds"] == first["timings"]["seconds"]  # the first render's timings, not new ones
    assert server.progress.outputs(again["id"]) == []  # no sampling step ran


def test_s3_media_in_and_the_video_to_the_output_bucket_by_default(server: Server, tmp_path: Path) -> None:
    job = tiny_job(
        id="from-s3", cond_image="s3://media/in/face.png", cond_audio={"person1": "s3://media/in/a.wav"}
    )
    answer = server.api.runsync(job)
    assert answer["status"] == "COMPLETED", answer
    out = answer["output"]
    assert out["return_video"] == "s3" and "video_base64" not in out
    assert out["s3"] == {
        "video": f"{OUTPUT_S3}/from-s3/video.mp4",
        "poster": f"{OUTPUT_S3}/from-s3/poster.png",
        "job_json": f"{OUTPUT_S3}/from-s3/job.json",
    }
    client = s3_client(server.s3)
    try:
        head = client.head_object(Bucket="renders", Key="worker/from-s3/video.mp4")
        client.download_file("renders", "worker/from-s3/video.mp4", str(tmp_path / "video.mp4"))
        record = json.loads(client.get_object(Bucket="renders", Key="worker/from-s3/job.json")["Body"].read())
    finally:
        client.close()
    assert head["ContentType"] == "video/mp4" and head["Metadata"]["sha256"] == out["sha256"]
    assert video_frames(tmp_path / "video.mp4") == (17, 128, 96)
    assert record["job"]["cond_image"] == "s3://media/in/face.png"
    assert out["media"] == {
        "cond_image": "s3://media/in/face.png",
        "cond_audio.person1": "s3://media/in/a.wav",
    }


def test_data_uris_through_run_then_status_with_the_runpod_job_id(server: Server) -> None:
    face = base64.b64encode((server.volume / "media" / "face.png").read_bytes()).decode()
    wav = base64.b64encode((server.volume / "media" / "a.wav").read_bytes()).decode()
    job = tiny_job(
        cond_image=f"data:image/png;base64,{face}",
        cond_audio={"person1": f"data:audio/wav;base64,{wav}"},
        return_video="volume",
    )
    queued = server.api.post("/run", {"input": job})
    assert queued["status"] == "IN_PROGRESS"
    answer = server.api.post(f"/status/{queued['id']}")
    assert answer["status"] == "COMPLETED", answer
    out = answer["output"]
    assert out["id"] == queued["id"]  # no id in the input: RunPod's ('test-<uuid>' here)
    assert video_frames(Path(out["video"])) == (17, 128, 96)
    assert out["media"]["cond_image"].startswith("data:image/png;base64,… (")
    # the job's record keeps a local path, not megabytes of base64
    assert face[:200] not in Path(out["job_json"]).read_text()
    # as the hosted API does, a second status call finds nothing
    assert server.api.post(f"/status/{queued['id']}")["error"] == "Job ID not found"


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"frames": 18}, "frames", "must be 4n+1"),
        ({"frams": 17}, "frams", "did you mean 'frames'"),
        ({"return_video": "email"}, "return_video", "not one of s3, volume, base64"),
        ({"cond_image": "volume:../../etc/passwd"}, "cond_image", "outside the volume root"),
        ({"cond_image": "/etc/passwd"}, "cond_image", "outside the allowed roots"),
        ({"cond_audio": {"person1": "volume:media/nope.wav"}}, "cond_audio.person1", "no such file"),
        ({"cond_image": "http://127.0.0.1:9/face.png"}, "cond_image", "only https URLs are fetched"),
    ],
)
def test_a_bad_input_fails_naming_the_field(server: Server, fields: dict, field: str, says: str) -> None:
    answer = server.api.runsync(tiny_job(id="bad-input", **fields))
    assert answer["status"] == "FAILED", answer
    assert f"render job runpod:{answer['id']}: field '{field}'" in answer["error"]
    assert says in answer["error"]
    assert not (server.volume / "outputs" / "bad-input").exists()


def test_a_presigned_url_that_fails_is_named_without_its_signature(server: Server) -> None:
    url = f"https://127.0.0.1:9/bucket/a.wav?X-Amz-Credential={SECRETS['AWS_ACCESS_KEY_ID']}&{SIGNATURE}"
    answer = server.api.runsync(tiny_job(id="signed", cond_audio={"person1": url}))
    assert answer["status"] == "FAILED", answer
    assert (
        "field 'cond_audio.person1': https://127.0.0.1:9/bucket/a.wav?…: cannot be fetched" in answer["error"]
    )
    assert SIGNATURE not in answer["error"] and "X-Amz" not in answer["error"]


def test_no_secret_in_any_response_or_log_line(server: Server) -> None:
    """Runs last: everything the server answered and printed in this module."""
    assert len(server.api.responses) >= 10
    seen = json.dumps(server.api.responses) + server.api.logs() + "".join(server.progress.requests)
    for name, value in SECRETS.items():
        assert value not in seen, f"{name}'s value was shown"
    assert "deadbeefsignature" not in seen
    # the logs were captured: the worker's own lines and the SDK's
    assert "mt_assets.worker INFO loaded transformer" in server.api.logs()
    assert "Started." in server.api.logs()
