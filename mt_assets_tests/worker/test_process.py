"""`python -m mt_assets.worker` as a process: what it refuses to start with, and the SDK's local run.

A worker that cannot serve (files missing or wrong, a setting that cannot work) must exit non-zero
with the reason on stderr before the SDK takes a job; the local run of ./test_input.json renders
offline, with Dagster unimportable and HF_HUB_OFFLINE set before any Hugging Face import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mt_assets.manifest import load_profile
from mt_assets.volume import LocalVolume
from mt_assets_tests.worker.conftest import SECRETS, video_frames, worker_env

REPO = Path(__file__).resolve().parents[2]
WORKER = (sys.executable, "-m", "mt_assets.worker")


def run_worker(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_an_incomplete_volume_stops_the_worker_listing_every_file_at_fault(
    tiny_volume: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    shutil.copytree(tiny_volume, volume)
    files = {f.component: f for f in load_profile("tiny").files}
    missing, truncated, rotten = files["vae"], files["t5"], files["clip"]
    (volume / missing.target).unlink()
    with open(volume / truncated.target, "r+b") as f:
        f.truncate(100)
    # Same size, other bytes, and a hash cache row that says so (an audit saw them): caught without hashing.
    path = volume / rotten.target
    path.write_bytes(bytes(b ^ 0xFF for b in path.read_bytes()))
    LocalVolume(volume).digest(rotten.target, os.stat(path))

    done = run_worker(worker_env(volume), tmp_path)
    assert done.returncode == 1, done.stderr
    assert f"volume {volume} is not complete for profile tiny (3 of 25 files)" in done.stderr
    assert f"missing        {missing.target}" in done.stderr
    assert f"size_mismatch  {truncated.target} (size is 100, expected {truncated.size})" in done.stderr
    assert f"hash_mismatch  {rotten.target} (the hash cache says sha256" in done.stderr
    assert "Starting Serverless Worker" not in done.stdout  # the SDK never took a job


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"MT_RENDER_DEVICE": "tpu"}, "MT_RENDER_DEVICE: expected one of cuda, cpu, got 'tpu'"),
        ({"MT_VOLUME": "/nonexistent/volume"}, "volume /nonexistent/volume: no such directory"),
        ({"MT_PROFILE": "tiny", "MT_MANIFEST": "x.yaml"}, "give one of them"),
        ({"MT_OUTPUT_S3": "s3://Bad_Bucket/x"}, "MT_OUTPUT_S3: "),
    ],
)
def test_a_setting_that_cannot_work_stops_the_worker_with_status_2(
    tiny_volume: Path, tmp_path: Path, setting: dict[str, str], says: str
) -> None:
    done = run_worker(worker_env(tiny_volume, **setting), tmp_path)
    assert done.returncode == 2, done.stderr
    assert "error: mt_assets.worker cannot start: " in done.stderr and says in done.stderr


# Imports the worker as `python -m mt_assets.worker` does, with an import hook that refuses Dagster
# and checks that HF_HUB_OFFLINE is already 1 when a Hugging Face library is first imported.
GUARDED_MAIN = """
import importlib.abc, os, runpy, sys

class Guard(importlib.abc.MetaPathFinder):
    seen = set()

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top == "dagster" or top.startswith("dagster_"):
            raise ImportError(f"dagster is not to be imported by the worker: {name}")
        if top in ("huggingface_hub", "transformers") and top not in self.seen:
            self.seen.add(top)
            offline = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
            print(f"guard: {top} first imported with offline={offline}", file=sys.stderr, flush=True)
        return None

sys.meta_path.insert(0, Guard())
sys.argv = ["mt_assets.worker", *sys.argv[1:]]
runpy.run_module("mt_assets.worker", run_name="__main__", alter_sys=True)
"""


def test_the_local_run_of_test_input_json_renders_offline_without_dagster(
    tiny_volume: Path, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    shutil.copytree(tiny_volume, volume)
    shutil.copy(REPO / "test_input.json", tmp_path / "test_input.json")  # the SDK reads ./test_input.json
    env = worker_env(volume)
    assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env  # the worker sets them
    done = subprocess.run(
        [sys.executable, "-c", GUARDED_MAIN],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Job local_test completed successfully" in done.stdout
    assert "guard: huggingface_hub first imported with offline=('1', '1')" in done.stderr
    assert "guard: transformers first imported with offline=('1', '1')" in done.stderr
    assert "dagster is not to be imported" not in done.stdout + done.stderr
    assert video_frames(volume / "outputs" / "local_test" / "video.mp4") == (17, 128, 96)
    # seconds per load unit are logged at start
    for unit in ("transformer", "t5", "t5-tokenizer", "clip", "clip-tokenizer", "vae", "wav2vec2"):
        assert f"mt_assets.worker INFO loaded {unit} " in done.stderr
    for value in SECRETS.values():
        assert value not in done.stdout + done.stderr
