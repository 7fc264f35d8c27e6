"""`make demo`'s program end to end, on temporary folders: it builds, materializes and says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import av


def test_the_demo_builds_the_tiny_mirror_materializes_everything_and_a_rerun_fetches_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MT_", "DAGSTER_"))},
        "MT_VOLUME": str(tmp_path / "volume"),
        "MT_SOURCE": str(tmp_path / "tiny-mirror"),
        "DAGSTER_HOME": str(home),
    }
    (home / "dagster.yaml").write_text((Path(__file__).parents[2] / "dagster.yaml").read_text())

    def demo() -> str:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "mt_assets.defs.demo"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert time.monotonic() - started < 180  # the budget for the whole demo on 2 cores
        assert "DEBUG" not in done.stdout + done.stderr  # Dagster's event stream stays in the run log
        return " ".join(done.stdout.split())

    first = demo()
    assert "building the tiny mirror" in first
    assert "materializing 26 model files and 3 bundles of profile tiny-fusionx" in first  # the default
    assert "model files placed │ 26" in first  # tiny's 25 and the FusionX LoRA twin
    assert "checks passed │ 29/29" in first  # 26 files, the offline proof, 2 repacks
    videos = mp4_paths(first)
    assert [v.parent.name for v in videos] == ["demo-one-speaker", "demo-two-speakers"]
    for video in videos:
        with av.open(str(video)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 17  # the frames the demo asks for
    one, two = (json.loads((v.parent / "job.json").read_text()) for v in videos)
    assert (
        one["job"]["preset"] == "fusionx" and one["job"]["steps"] == 8 and one["job"]["text_guidance"] == 1.0
    )
    assert one["dit_evaluations_planned"] == one["dit_evaluations_run"] == 16  # 8 steps x 2 evaluations
    assert "models/Wan14BT2VFusioniX/FusionX_LoRa/Wan2.1_I2V_14B_FusionX_LoRA.safetensors" in {
        m["target"] for m in one["models"]
    }
    assert "rendered demo-one-speaker: 17 frames, 128x96, 16 DiT evaluations" in first
    assert two["settings"]["speakers"] == 2 and two["job"]["audio_type"] == "para"
    # a demo interrupted after submitting leaves its job in the inbox: the next demo clears it and goes on
    leftover = tmp_path / "volume" / "jobs" / "inbox" / "demo-one-speaker"
    leftover.mkdir()
    (leftover / "job.json").write_text(json.dumps({"id": "demo-one-speaker", "prompt": "left over"}))
    second = demo()
    assert f"removed {leftover}, left by an interrupted demo" in second
    assert "model files skipped │ 26" in second
    assert "building the tiny mirror" not in second
    assert mp4_paths(second) == videos  # the demo's jobs say rerender: true, so a rerun renders again


def mp4_paths(output: str) -> list[Path]:
    """The paths listed after 'mp4 files:'."""
    listed = output.split("mp4 files:", 1)[1].split("next:", 1)[0]
    return [Path(p) for p in listed.split()]
