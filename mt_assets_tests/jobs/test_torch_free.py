"""`mt_assets.jobs` works where torch is not installed: the inbox, `mt-assets jobs` and a RunPod request
are checked without loading any model code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from mt_assets.tiny.samples import write_face_image, write_speech

BLOCKER = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "diffusers", "safetensors"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, NoTorch())
"""


def test_jobs_package_parses_decodes_and_queues_a_job_with_torch_blocked(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    folder = volume / "jobs" / "inbox" / "talk"
    folder.mkdir(parents=True)
    write_face_image(folder / "face.png", 64, 48)
    write_speech(folder / "speech.wav", 1.0)
    (folder / "job.yaml").write_text(
        "prompt: hi\ncond_image: face.png\ncond_audio: {person1: speech.wav}\nframes: 5\n"
    )
    code = BLOCKER + textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        import mt_assets.jobs
        from mt_assets.jobs.decode import load_job_media
        from mt_assets.jobs.queue import JobQueue
        from mt_assets.jobs.reader import load_job

        job = load_job(Path({str(folder)!r}))
        media = load_job_media(job)
        assert media.image.size == (64, 48), media.image.size
        os.utime({str(folder)!r}, (0, 0))
        for p in Path({str(folder)!r}).iterdir():
            os.utime(p, (0, 0))
        scan = JobQueue(Path({str(volume)!r})).scan_inbox()
        assert [a.id for a in scan.accepted] == ["talk"], scan
        assert not any(m.split(".")[0] == "torch" for m in sys.modules)
        print("torch-free ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "torch-free ok" in done.stdout
