"""`make demo`'s program end to end, on temporary folders: it builds, materializes and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


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
        done = subprocess.run(
            [sys.executable, "-m", "mt_assets.defs.demo"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return " ".join(done.stdout.split())

    first = demo()
    assert "building the tiny mirror" in first
    assert "model files placed │ 25" in first
    assert "checks passed │ 26/26" in first
    second = demo()
    assert "model files skipped │ 25" in second
    assert "building the tiny mirror" not in second
