"""Worker fixtures: a writable copy of the tiny volume with media on it, tiny jobs, secrets to hunt for.

The session's `tiny_volume` is shared read-only, and the worker writes `<volume>/outputs/`, so each
module gets its own copy (about 5 MB). A copy's files have new inodes, so the hash cache's rows no
longer match them: the worker's start-up check finds them `unverified`, which it allows.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import pytest

from mt_assets.tiny.samples import write_face_image, write_speech

# Small enough for 2 shared CPU cores, large enough that every stage runs: 5 latent frames, 4 steps.
TINY_JOB: dict[str, object] = {
    "prompt": "A person talks to the camera.",
    "size": "128x96",
    "frames": 17,
    "steps": 4,
}
# Values the worker must never print or return (tests set them as the worker's credentials).
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAWORKERTESTKEY0001",
    "AWS_SECRET_ACCESS_KEY": "worker-secret-never-printed-4f1c",
    "HF_TOKEN": "hf_worker_token_never_printed_9e2b",
}
SIGNATURE = "X-Amz-Signature=deadbeefsignaturenevershown"


def copy_volume(tiny_volume: Path, dest: Path) -> Path:
    """A writable copy of the tiny volume, with media/face.png (160x120) and media/a.wav (1.0 s)."""
    shutil.copytree(tiny_volume, dest)
    write_face_image(dest / "media" / "face.png", 160, 120)
    write_speech(dest / "media" / "a.wav", 1.0, pitch=150, seed=1)
    return dest


def tiny_job(**fields: object) -> dict[str, object]:
    return {
        **TINY_JOB,
        "cond_image": "volume:media/face.png",
        "cond_audio": {"person1": "volume:media/a.wav"},
        **fields,
    }


def worker_env(volume: Path, **extra: str) -> dict[str, str]:
    """The environment of a worker process: this interpreter's, the volume, dummy AWS settings."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MT_", "RUNPOD_", "HF_HUB_OFFLINE"))
    }
    env.update(
        MT_VOLUME=str(volume),
        MT_PROFILE="tiny",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(volume.parent / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(volume.parent / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
        **SECRETS,
    )
    env.update(extra)
    return env


def video_frames(path: Path) -> tuple[int, int, int]:
    """(frames, width, height) of an mp4, as PyAV decodes it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, stream.codec_context.width, stream.codec_context.height


@pytest.fixture(scope="module")
def worker_volume(tiny_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_volume(tiny_volume, tmp_path_factory.mktemp("worker") / "volume")
