"""Provisioning from a mirror folder: plan, fetch, verify, place; faults leave the volume as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mt_assets import provision
from mt_assets.audit import audit
from mt_assets.manifest import parse_manifest
from mt_assets.sources import MirrorSource
from mt_assets_tests.conftest import CLI, SyntheticVolume, manifest_yaml, run_cli, small_tmpfs
from mt_assets_tests.volume.backends import Backend, GatedMirror


def make_mirror(sv: SyntheticVolume, root: Path) -> Path:
    for f in sv.files:
        dest = root / f.component / f.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.data)
    return root


@pytest.fixture
def empty_volume_and_mirror(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> tuple[SyntheticVolume, Path]:
    sv = synthetic_volume(place=False)
    return sv, make_mirror(sv, tmp_path / "mirror")


def test_provision_fills_an_empty_volume_and_a_rerun_fetches_nothing(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror
    vol = sv.volume()
    the_plan = provision.plan(sv.manifest, vol)
    assert len(the_plan.to_fetch) == 3
    assert the_plan.to_fetch_bytes == sum(len(f.data) for f in sv.files)
    report = provision.apply(the_plan, MirrorSource(mirror), vol, jobs=2)
    assert report.complete
    assert {r.outcome for r in report.results} == {"placed"}
    assert all(r.bytes == r.file.size and r.sha256 == r.file.sha256 for r in report.results)
    for f in sv.files:
        assert sv.target(f.path).read_bytes() == f.data
    assert provision.plan(sv.manifest, vol).to_fetch == []


def test_wrong_bytes_in_the_source_are_never_placed(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror
    bad = mirror / "alpha" / "a.bin"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    vol = sv.volume()
    report = provision.apply(provision.plan(sv.manifest, vol), MirrorSource(mirror), vol)
    result = next(r for r in report.results if r.file.path == "a.bin")
    assert result.outcome == "failed"
    assert result.status == "missing"
    expected = sv.files[0].sha256
    assert result.detail is not None
    assert result.detail.startswith("models/alpha/a.bin: sha256 is ")
    assert result.detail.endswith(f"expected {expected[:12]}…; not placed")
    assert not sv.target("a.bin").exists()
    assert not report.complete
    assert list((sv.root / ".mt" / "staging").iterdir()) == []


def test_a_damaged_file_on_the_volume_is_replaced(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror
    sv.place_all()
    with open(sv.target("a.bin"), "r+b") as f:
        f.truncate(10)
    vol = sv.volume()
    the_plan = provision.plan(sv.manifest, vol)
    assert [(fa.file.path, fa.status) for fa in the_plan.to_fetch] == [("a.bin", "size_mismatch")]
    report = provision.apply(the_plan, MirrorSource(mirror), vol)
    assert report.complete
    assert sv.target("a.bin").read_bytes() == sv.files[0].data


def test_unpinned_files_are_fetched_hashed_and_reported_unpinned(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror
    unpinned = parse_manifest(manifest_yaml(sv.files, pin=False), "unpinned.yaml")
    vol = sv.volume()
    report = provision.apply(provision.plan(unpinned, vol), MirrorSource(mirror), vol)
    assert {(r.outcome, r.status) for r in report.results} == {("placed", "unpinned")}
    assert {r.sha256 for r in report.results} == {f.sha256 for f in sv.files}
    assert not report.complete  # fetched, but never silently trusted as ok


def test_a_missing_source_file_fails_that_file_only(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror
    (mirror / "beta" / "c.json").unlink()
    vol = sv.volume()
    report = provision.apply(provision.plan(sv.manifest, vol), MirrorSource(mirror), vol)
    outcomes = {r.file.path: (r.outcome, r.attempts) for r in report.results}
    assert outcomes == {"a.bin": ("placed", 1), "sub/b.bin": ("placed", 1), "c.json": ("failed", 1)}
    failed = next(r for r in report.results if r.outcome == "failed")
    assert failed.detail == f"models/beta/c.json from {mirror / 'beta' / 'c.json'}: not in the mirror"


def test_a_volume_too_small_is_refused_before_fetching(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, _ = empty_volume_and_mirror
    total = sum(len(f.data) for f in sv.files)
    the_plan = provision.plan(sv.manifest, sv.volume(capacity=total))  # no room for the 5% margin
    assert not the_plan.fits
    with pytest.raises(
        provision.NotEnoughSpace,
        match=r"^volume .*: 37\d\.\d kB free, 37\d\.\d kB to fetch \(\+5% margin\): free .* or pass --only$",
    ):
        the_plan.check_space()
    assert provision.plan(sv.manifest, sv.volume(capacity=total * 2)).fits


def test_cli_refuses_a_volume_that_is_really_full(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path], tmp_path: Path
) -> None:
    sv, mirror = empty_volume_and_mirror
    with small_tmpfs(tmp_path / "small", "200k") as small:
        manifest = tmp_path / "m.yaml"
        manifest.write_text(manifest_yaml(sv.files))
        result = run_cli(
            "provision",
            "--manifest",
            str(manifest),
            "--volume",
            str(small),
            "--source",
            str(mirror),
            "--json",
        )
        assert result.returncode == 1
        assert f"error: volume {small}: " in result.stderr and "or pass --only" in result.stderr
        refused = json.loads(result.stdout)  # --json still prints one document
        assert refused["complete"] is False and "or pass --only" in refused["error"]
        assert not (small / "models").exists()
        only = run_cli(
            "provision",
            "--manifest",
            str(manifest),
            "--volume",
            str(small),
            "--source",
            str(mirror),
            "--only",
            "beta",
            "--json",
        )
        assert only.returncode == 0, only.stderr
        assert json.loads(only.stdout)["complete"] is True


def test_dry_run_prints_the_plan_and_writes_nothing(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path], tmp_path: Path
) -> None:
    sv, mirror = empty_volume_and_mirror
    manifest = sv.write_manifest(tmp_path / "m.yaml")
    result = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        str(sv.root),
        "--source",
        str(mirror),
        "--dry-run",
        "--json",
    )
    assert result.returncode == 1, result.stderr  # as audit's: files are missing
    doc = json.loads(result.stdout)
    assert doc["to_fetch_bytes"] == sum(len(f.data) for f in sv.files)
    assert [f["status"] for f in doc["files"]] == ["missing"] * 3
    assert not (sv.root / "models").exists()
    sv.place_all()
    done = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        str(sv.root),
        "--source",
        str(mirror),
        "--dry-run",
    )
    assert done.returncode == 0  # nothing to do
    assert "0 files to fetch" in done.stdout


def test_unknown_only_component_is_bad_input(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path], tmp_path: Path
) -> None:
    sv, mirror = empty_volume_and_mirror
    manifest = sv.write_manifest(tmp_path / "m.yaml")
    result = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        str(sv.root),
        "--source",
        str(mirror),
        "--only",
        "gamma",
    )
    assert result.returncode == 2
    assert "no component 'gamma' (known: alpha, beta)" in result.stderr


def fifo_mirror(sv: SyntheticVolume, root: Path, fifo_path: str) -> Path:
    """A mirror whose file `fifo_path` is a named pipe: its reader blocks until the test feeds it."""
    make_mirror(sv, root)
    f = next(f for f in sv.files if f.path == fifo_path)
    pipe = root / f.component / f.path
    pipe.unlink()
    os.mkfifo(pipe)
    return pipe


def test_sigkill_mid_download_then_rerun_resumes_and_audits_clean(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume({"alpha": {"big.bin": 3_000_000, "small.bin": 1000}}, place=False)
    manifest = sv.write_manifest(tmp_path / "m.yaml")
    pipe = fifo_mirror(sv, tmp_path / "slow-mirror", "big.bin")
    victim = subprocess.Popen(
        [
            *CLI,
            "provision",
            "--manifest",
            str(manifest),
            "--volume",
            str(sv.root),
            "--source",
            str(tmp_path / "slow-mirror"),
            "--jobs",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    half = 1_500_000
    with open(pipe, "wb") as feed:  # blocks until the provisioner opens the pipe
        feed.write(sv.files[0].data[:half])
        feed.flush()
        staged = sv.root / ".mt" / "staging"
        deadline = time.monotonic() + 30
        while sum(p.stat().st_size for p in staged.glob("*.part")) < half:
            assert time.monotonic() < deadline, "the provisioner never staged the first half"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert not sv.target("big.bin").exists()  # nothing half-written at the final path

    pipe.unlink()
    make_mirror(sv, tmp_path / "slow-mirror")  # the source is whole again
    rerun = run_cli(
        "provision",
        "--manifest",
        str(manifest),
        "--volume",
        str(sv.root),
        "--source",
        str(tmp_path / "slow-mirror"),
        "--json",
    )
    assert rerun.returncode == 0, rerun.stderr
    big = next(r for r in json.loads(rerun.stdout)["results"] if r["path"] == "big.bin")
    assert big["resumed_from"] >= half
    assert big["bytes"] == 3_000_000 - big["resumed_from"]
    audited = run_cli("audit", "--manifest", str(manifest), "--volume", str(sv.root), "--full", "--json")
    assert audited.returncode == 0
    assert json.loads(audited.stdout)["complete"] is True


def test_two_provisioners_at_once_fetch_each_file_once(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume({"alpha": {"x.bin": 200_000, "y.bin": 300_000, "z.bin": 400_000}}, place=False)
    manifest = sv.write_manifest(tmp_path / "m.yaml")
    pipe = fifo_mirror(sv, tmp_path / "mirror-a", "x.bin")
    first = subprocess.Popen(
        [
            *CLI,
            "provision",
            "--manifest",
            str(manifest),
            "--volume",
            str(sv.root),
            "--source",
            str(tmp_path / "mirror-a"),
            "--jobs",
            "1",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with open(pipe, "wb") as feed:  # the first provisioner now holds x.bin's lock, waiting for bytes
        vol = sv.volume()
        second_report: list[provision.ProvisionReport] = []
        second = threading.Thread(
            target=lambda: second_report.append(
                provision.apply(
                    provision.plan(sv.manifest, vol),
                    MirrorSource(make_mirror(sv, tmp_path / "mirror-b")),
                    vol,
                    jobs=2,
                )
            )
        )
        second.start()
        deadline = time.monotonic() + 30
        while not (sv.target("y.bin").exists() and sv.target("z.bin").exists()):
            assert time.monotonic() < deadline, "the second provisioner did not fetch y and z"
            time.sleep(0.05)
        feed.write(sv.files[0].data)
    second.join(60)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err

    first_outcomes = {r["path"]: r["outcome"] for r in json.loads(out)["results"]}
    second_outcomes = {r.file.path: r.outcome for r in second_report[0].results}
    assert first_outcomes == {"x.bin": "placed", "y.bin": "skipped", "z.bin": "skipped"}
    assert second_outcomes == {"x.bin": "skipped", "y.bin": "placed", "z.bin": "placed"}
    assert audit(sv.manifest, vol, full=True).complete


def test_bad_bytes_left_staged_by_a_dead_writer_are_discarded_and_the_file_refetched(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    from mt_assets.volume import Expected
    from mt_assets.volume.atomic import staging_prefix

    sv, mirror = empty_volume_and_mirror
    f = sv.manifest.files[0]
    staging = sv.root / ".mt" / "staging"
    staging.mkdir(parents=True)
    # A dead writer of the same pin left 1,000 bytes that are not the file's first 1,000 bytes.
    left = staging / f"{staging_prefix(f.target, Expected(f.size, f.sha256, f.git_sha1))}.deadbeef0000.part"
    left.write_bytes(b"\0" * 1000)
    vol = sv.volume()
    report = provision.apply(provision.plan(sv.manifest, vol), MirrorSource(mirror), vol)
    result = next(r for r in report.results if r.file.path == f.path)
    assert (result.outcome, result.attempts) == ("placed", 2)
    assert sv.target(f.path).read_bytes() == sv.files[0].data
    assert list(staging.iterdir()) == []


def test_one_files_unexpected_error_fails_that_file_and_not_the_run(
    empty_volume_and_mirror: tuple[SyntheticVolume, Path],
) -> None:
    sv, mirror = empty_volume_and_mirror

    class ExplodingOnOneFile(MirrorSource):
        def fetch(self, f, writer, on_bytes):  # type: ignore[no-untyped-def]
            if f.path == "c.json":
                raise ValueError("decoder exploded")
            return super().fetch(f, writer, on_bytes)

    vol = sv.volume()
    report = provision.apply(provision.plan(sv.manifest, vol), ExplodingOnOneFile(mirror), vol)
    outcomes = {r.file.path: r.outcome for r in report.results}
    assert outcomes == {"a.bin": "placed", "sub/b.bin": "placed", "c.json": "failed"}
    failed = next(r for r in report.results if r.outcome == "failed")
    assert failed.detail == "models/beta/c.json: ValueError: decoder exploded"


# -- both backends: a folder, and an S3 volume on moto_server (mt_assets_tests/volume/backends.py) -----


def test_provision_fills_both_backends_and_a_rerun_fetches_nothing(
    volume_backend: Backend, tmp_path: Path
) -> None:
    b = volume_backend.fill(place=False)
    assert b.manifest is not None
    vol = b.volume()
    mirror = MirrorSource(b.mirror(tmp_path / "mirror"))
    report = provision.apply(provision.plan(b.manifest, vol), mirror, vol, jobs=2)
    assert report.complete
    assert {r.outcome for r in report.results} == {"placed"}
    for f in b.files:
        assert b.get(b.target(f.path)) == f.data
    again = b.volume()
    assert provision.plan(b.manifest, again).to_fetch == []
    assert audit(b.manifest, again).bytes_read == 0  # the writer recorded what it placed
    assert b.uploads() == []


def test_wrong_bytes_are_never_placed_on_either_backend(volume_backend: Backend, tmp_path: Path) -> None:
    b = volume_backend.fill(place=False)
    assert b.manifest is not None
    root = b.mirror(tmp_path / "mirror")
    bad = root / "alpha" / "a.bin"  # 300 kB: a multipart upload on the S3 volume
    data = bytearray(bad.read_bytes())
    data[250_000] ^= 0xFF  # in the last part: every part before it was already sent
    bad.write_bytes(bytes(data))
    vol = b.volume()
    report = provision.apply(provision.plan(b.manifest, vol), MirrorSource(root), vol)
    result = next(r for r in report.results if r.file.path == "a.bin")
    assert (result.outcome, result.status) == ("failed", "missing")
    assert result.detail is not None and result.detail.startswith("models/alpha/a.bin: sha256 is ")
    assert result.detail.endswith("; not placed")
    assert b.get(b.target("a.bin")) is None
    assert b.uploads() == []  # aborted, not left to take space
    assert {r.outcome for r in report.results if r.file.path != "a.bin"} == {"placed"}


def test_a_damaged_file_is_replaced_on_both_backends(volume_backend: Backend, tmp_path: Path) -> None:
    b = volume_backend.fill()
    assert b.manifest is not None
    b.put(b.target("a.bin"), b.data("a.bin")[:10])
    vol = b.volume()
    the_plan = provision.plan(b.manifest, vol)
    assert [(fa.file.path, fa.status) for fa in the_plan.to_fetch] == [("a.bin", "size_mismatch")]
    report = provision.apply(the_plan, MirrorSource(b.mirror(tmp_path / "mirror")), vol)
    assert report.complete
    assert b.get(b.target("a.bin")) == b.data("a.bin")


def test_two_provisioners_at_once_fetch_each_file_once_on_both_backends(
    volume_backend: Backend, tmp_path: Path
) -> None:
    b = volume_backend.fill({"alpha": {"x.bin": 200_000, "y.bin": 300_000, "z.bin": 400_000}}, place=False)
    assert b.manifest is not None
    root = b.mirror(tmp_path / "mirror")
    first_source = GatedMirror(root, "x.bin")
    reports: dict[str, provision.ProvisionReport] = {}

    def run(name: str, source: MirrorSource, jobs: int) -> None:
        vol = b.volume()  # each provisioner its own volume object, as two processes would have
        reports[name] = provision.apply(provision.plan(b.manifest, vol), source, vol, jobs=jobs)  # type: ignore[arg-type]

    first = threading.Thread(target=run, args=("first", first_source, 1))
    first.start()
    assert first_source.started.wait(30)  # the first holds x.bin's lock, waiting for its bytes
    second = threading.Thread(target=run, args=("second", MirrorSource(root), 2))
    second.start()
    deadline = time.monotonic() + 60
    while not (b.get(b.target("y.bin")) and b.get(b.target("z.bin"))):
        assert time.monotonic() < deadline, "the second provisioner did not place y and z"
        time.sleep(0.05)
    first_source.gate.set()
    first.join(60)
    second.join(60)
    outcomes = {name: {r.file.path: r.outcome for r in report.results} for name, report in reports.items()}
    assert outcomes == {
        "first": {"x.bin": "placed", "y.bin": "skipped", "z.bin": "skipped"},
        "second": {"x.bin": "skipped", "y.bin": "placed", "z.bin": "placed"},
    }
    assert audit(b.manifest, b.volume(), full=True).complete


def test_unpinned_files_larger_than_a_part_are_placed_and_reported_unpinned_on_both_backends(
    volume_backend: Backend, tmp_path: Path
) -> None:
    b = volume_backend.fill({"alpha": {"big.bin": 700_000, "small.bin": 1_000}}, place=False)
    unpinned = parse_manifest(manifest_yaml(b.files, pin=False), "unpinned.yaml")  # sizes unknown too
    vol = b.volume()
    report = provision.apply(provision.plan(unpinned, vol), MirrorSource(b.mirror(tmp_path / "m")), vol)
    assert {(r.file.path, r.outcome, r.status) for r in report.results} == {
        ("big.bin", "placed", "unpinned"),
        ("small.bin", "placed", "unpinned"),
    }
    assert {r.sha256 for r in report.results} == {f.sha256 for f in b.files}
    assert b.get(b.target("big.bin")) == b.data("big.bin")  # held until it proved large, then in parts
