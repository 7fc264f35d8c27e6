"""The inbox sensor knows its Definitions' profile: a dropped job whose preset that profile does not serve
is rejected with the reason, through the sensor the Definitions hold."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import dagster as dg
import yaml

from mt_assets.defs.definitions import build_definitions
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import load_profile
from mt_assets.tiny.samples import write_face_image, write_speech


def drop(root: Path, name: str, **fields: object) -> None:
    folder = root / "jobs" / "inbox" / name
    folder.mkdir(parents=True)
    write_face_image(folder / "face.png", 64, 48)
    write_speech(folder / "speech.wav", 1.0)
    doc = {"prompt": "A person talks.", "cond_image": "face.png", "cond_audio": {"person1": "speech.wav"}}
    (folder / "job.yaml").write_text(yaml.safe_dump({**doc, "frames": 13, **fields}))
    settled = time.time() - 600  # a finished copy, seen long ago
    for p in [*folder.iterdir(), folder]:
        os.utime(p, (settled, settled))


def tick(defs: dg.Definitions, root: Path) -> dg.SensorResult:
    sensor = defs.get_sensor_def("render_inbox")
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(
            instance=instance, resources={"volume": VolumeResource(path=str(root))}
        )
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def test_the_sensor_rejects_a_preset_its_profile_does_not_serve_and_queues_one_it_serves(
    tmp_path: Path,
) -> None:
    tiny = load_profile("tiny")
    root = tmp_path / "volume"
    drop(root, "fast", preset="fusionx")
    result = tick(build_definitions(tiny), root)
    assert not result.run_requests
    error = (root / "jobs" / "rejected" / "fast.error.txt").read_text()
    assert "field 'preset': 'fusionx' is not served by profile 'tiny'" in error

    drop(root, "fast2", preset="fusionx")
    result = tick(build_definitions(dataclasses.replace(tiny, presets=("fusionx",))), root)
    assert [r.partition_key for r in result.run_requests] == ["fast2"]
    assert (root / "jobs" / "queued" / "fast2.json").is_file()
