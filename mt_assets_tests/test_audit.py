"""The audit gives every file its status, and an unchanged volume is audited without reading data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import mt_assets.audit as audit_module
import mt_assets.volume.local as volume_local
from mt_assets.audit import audit
from mt_assets.manifest import parse_manifest
from mt_assets.progress import FILES
from mt_assets_tests.conftest import SyntheticVolume, flip_bit_keep_mtime, manifest_yaml, rot_bit
from mt_assets_tests.volume.backends import Backend


@pytest.fixture
def hash_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose bytes were read for hashing, in order."""
    reads: list[str] = []
    real = volume_local.hash_file

    def counting(path: str | Path, on_bytes: Callable[[int], None] | None = None, **kwargs: bool) -> object:
        reads.append(Path(path).name)
        return real(path, on_bytes=on_bytes, **kwargs)

    monkeypatch.setattr(volume_local, "hash_file", counting)
    return reads


def statuses(report: object) -> dict[str, str]:
    return {fa.file.path: fa.status for fa in report.files}  # type: ignore[attr-defined]


def test_complete_volume_is_ok(synthetic_volume: Callable[..., SyntheticVolume]) -> None:
    sv = synthetic_volume()
    report = audit(sv.manifest, sv.volume())
    assert report.complete
    assert set(statuses(report).values()) == {"ok"}
    assert report.totals.to_fetch_bytes == 0
    assert report.totals.present_bytes == sum(len(f.data) for f in sv.files)


def test_each_kind_of_damage_gets_its_status(synthetic_volume: Callable[..., SyntheticVolume]) -> None:
    sv = synthetic_volume(
        {
            "alpha": {
                "gone.bin": 5000,
                "short.bin": 5000,
                "flipped.bin": 5000,
                "bigger.bin": 5000,
                "fine.bin": 5000,
            }
        }
    )
    sv.target("gone.bin").unlink()
    with open(sv.target("short.bin"), "r+b") as f:
        f.truncate(4000)
    flip_bit_keep_mtime(sv.target("flipped.bin"), offset=1234)
    with open(sv.target("bigger.bin"), "ab") as f:
        f.write(b"tail")
    (sv.root / "models/alpha/extra.bin").write_bytes(b"not in the manifest")

    report = audit(sv.manifest, sv.volume())
    assert statuses(report) == {
        "gone.bin": "missing",
        "short.bin": "size_mismatch",
        "flipped.bin": "hash_mismatch",
        "bigger.bin": "size_mismatch",
        "fine.bin": "ok",
    }
    assert not report.complete
    by_path = {fa.file.path: fa for fa in report.files}
    assert by_path["short.bin"].detail == "size is 4000, expected 5000"
    assert by_path["flipped.bin"].detail.startswith("sha256 is ")
    assert report.totals.to_fetch_bytes == 4 * 5000


def test_present_file_without_a_pin_is_unpinned_not_ok(
    synthetic_volume: Callable[..., SyntheticVolume],
) -> None:
    sv = synthetic_volume()
    unpinned = parse_manifest(manifest_yaml(sv.files, pin=False), "unpinned.yaml")
    report = audit(unpinned, sv.volume())
    assert set(statuses(report).values()) == {"unpinned"}
    assert not report.complete
    assert {fa.sha256 for fa in report.files} == {f.sha256 for f in sv.files}  # hashed, ready for a lock


def test_a_symlink_is_not_a_file_on_the_volume(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume({"alpha": {"a.bin": 100}})
    outside = tmp_path / "outside.bin"
    outside.write_bytes(sv.files[0].data)
    sv.target("a.bin").unlink()
    sv.target("a.bin").symlink_to(outside)
    [fa] = audit(sv.manifest, sv.volume()).files
    assert (fa.status, fa.detail) == ("missing", "is a symlink; the volume keeps real files")


def test_second_audit_of_an_unchanged_volume_reads_no_file_data(
    synthetic_volume: Callable[..., SyntheticVolume], hash_reads: list[str]
) -> None:
    sv = synthetic_volume()
    first = audit(sv.manifest, sv.volume())
    assert sorted(hash_reads) == sorted(Path(f.path).name for f in sv.files)
    assert first.bytes_read == sum(len(f.data) for f in sv.files)

    hash_reads.clear()
    second = audit(sv.manifest, sv.volume())  # a new process would open the same cache
    assert hash_reads == []
    assert second.bytes_read == 0
    assert second.complete


def test_touching_or_modifying_one_file_rehashes_only_that_file(
    synthetic_volume: Callable[..., SyntheticVolume], hash_reads: list[str]
) -> None:
    sv = synthetic_volume()
    audit(sv.manifest, sv.volume())

    hash_reads.clear()
    os.utime(sv.target("a.bin"))  # touched: same bytes, new mtime
    report = audit(sv.manifest, sv.volume())
    assert hash_reads == ["a.bin"]
    assert report.complete

    hash_reads.clear()
    data = bytearray(sv.target("sub/b.bin").read_bytes())
    data[0] ^= 0xFF
    sv.target("sub/b.bin").write_bytes(bytes(data))  # modified in place, same size
    report = audit(sv.manifest, sv.volume())
    assert hash_reads == ["b.bin"]
    assert statuses(report)["sub/b.bin"] == "hash_mismatch"


def test_replacing_a_file_with_same_size_and_mtime_is_caught_by_its_inode(
    synthetic_volume: Callable[..., SyntheticVolume], hash_reads: list[str]
) -> None:
    sv = synthetic_volume({"alpha": {"a.bin": 1000}})
    audit(sv.manifest, sv.volume())
    path = sv.target("a.bin")
    st = os.stat(path)
    replacement = path.with_name("new")
    replacement.write_bytes(os.urandom(1000))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)
    hash_reads.clear()
    assert statuses(audit(sv.manifest, sv.volume())) == {"a.bin": "hash_mismatch"}
    assert hash_reads == ["a.bin"]


def test_a_write_with_the_mtime_put_back_is_still_rehashed(
    synthetic_volume: Callable[..., SyntheticVolume], hash_reads: list[str]
) -> None:
    sv = synthetic_volume()
    audit(sv.manifest, sv.volume())
    flip_bit_keep_mtime(sv.target("a.bin"), offset=10)  # same size, same mtime, same inode: new ctime
    hash_reads.clear()
    report = audit(sv.manifest, sv.volume())
    assert hash_reads == ["a.bin"]
    assert statuses(report)["a.bin"] == "hash_mismatch"


def test_full_audit_ignores_the_cache_and_catches_rot_no_stat_shows(
    synthetic_volume: Callable[..., SyntheticVolume], hash_reads: list[str]
) -> None:
    sv = synthetic_volume()
    vol = sv.volume()
    audit(sv.manifest, vol)
    rot_bit(vol, sv.manifest.files[0].target, offset=10)
    assert audit(sv.manifest, vol).complete  # invisible to the cached audit, by design

    hash_reads.clear()
    report = audit(sv.manifest, vol, full=True, jobs=2)
    assert sorted(hash_reads) == sorted(Path(f.path).name for f in sv.files)
    assert statuses(report)["a.bin"] == "hash_mismatch"


def test_space_accounting_per_component_and_fit(synthetic_volume: Callable[..., SyntheticVolume]) -> None:
    sv = synthetic_volume(
        {"alpha": {"a.bin": 10_000, "b.bin": 20_000}, "beta": {"c.bin": 5_000}}, place=False
    )
    report = audit(sv.manifest, sv.volume())
    assert statuses(report) == {"a.bin": "missing", "b.bin": "missing", "c.bin": "missing"}
    comps = report.component_totals()
    assert (comps["alpha"].needed_bytes, comps["alpha"].to_fetch_bytes) == (30_000, 30_000)
    assert (comps["beta"].needed_bytes, comps["beta"].present_bytes) == (5_000, 0)
    assert report.fits
    tight = audit(sv.manifest, sv.volume(capacity=35_000))
    assert tight.free_bytes <= 35_000
    assert not tight.fits  # 35,000 to fetch + 5% margin > 35,000 free


def test_a_file_pinned_by_git_blob_id_is_checked_by_it(tmp_path: Path) -> None:
    from mt_assets.volume import LocalVolume
    from mt_assets.volume.hashing import git_blob_sha1

    data = b'{"hidden_size": 768}\n'
    (tmp_path / "models/w").mkdir(parents=True)
    (tmp_path / "models/w/config.json").write_bytes(data)
    text = (
        "profile: p\ncomponents:\n  - {name: w, repo: o/r, revision: main, dir: w, files: "
        f"[{{path: config.json, kind: config, size: {len(data)}, git_sha1: {git_blob_sha1(data)}}}]}}\n"
    )
    vol = LocalVolume(tmp_path)
    assert statuses(audit(parse_manifest(text, "m.yaml"), vol)) == {"config.json": "ok"}
    wrong = text.replace(git_blob_sha1(data), "f" * 40)
    [fa] = audit(parse_manifest(wrong, "m.yaml"), vol).files
    assert (fa.status, fa.detail) == (
        "hash_mismatch",
        f"git_sha1 is {git_blob_sha1(data)[:12]}…, expected ffffffffffff…",
    )


def test_an_unchanged_volume_is_audited_without_reading_its_bytes_by_the_kernels_count(
    synthetic_volume: Callable[..., SyntheticVolume],
) -> None:
    """The kernel's own count of bytes this process read (/proc/self/io rchar), not the code's."""
    sv = synthetic_volume({"alpha": {"a.bin": 4_000_000, "b.bin": 4_000_000}, "beta": {"c.bin": 4_000_000}})
    audit(sv.manifest, sv.volume())

    def rchar() -> int:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
        raise AssertionError("no rchar in /proc/self/io")

    before = rchar()
    assert audit(sv.manifest, sv.volume()).complete
    read = rchar() - before
    assert read < 1_000_000, f"the second audit read {read} bytes of a 12 MB volume"


def test_files_across_batches_keep_their_order_and_status_whether_hashed_or_from_the_cache(
    synthetic_volume: Callable[..., SyntheticVolume], monkeypatch: pytest.MonkeyPatch, hash_reads: list[str]
) -> None:
    monkeypatch.setattr(audit_module, "BATCH", 3)  # stat, cache look-ups and hashing, 3 files at a time
    monkeypatch.setattr(audit_module, "READING_PER_JOB", 1)  # and at most 2 files queued for hashing
    names = [f"f{i:02d}.bin" for i in range(14)]
    sv = synthetic_volume({"alpha": dict.fromkeys(names[:7], 700), "beta": dict.fromkeys(names[7:], 300)})
    assert audit(sv.manifest, sv.volume(), jobs=2).complete
    sv.target("f01.bin").unlink()
    flip_bit_keep_mtime(sv.target("f05.bin"))
    with open(sv.target("f09.bin"), "ab") as f:
        f.write(b"tail")
    os.utime(sv.target("f12.bin"))  # touched: read again, still ok

    hash_reads.clear()
    report = audit(sv.manifest, sv.volume(), jobs=2)
    assert [fa.file.path for fa in report.files] == names  # the manifest's order
    assert statuses(report) == {
        **dict.fromkeys(names, "ok"),
        "f01.bin": "missing",
        "f05.bin": "hash_mismatch",
        "f09.bin": "size_mismatch",
    }
    assert sorted(hash_reads) == ["f05.bin", "f12.bin"]
    assert report.bytes_read == 700 + 300


def test_progress_counts_every_file_checked_and_has_a_bar_only_for_files_read(
    synthetic_volume: Callable[..., SyntheticVolume], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_module, "BATCH", 2)
    sv = synthetic_volume({"alpha": {"a.bin": 1000, "b.bin": 2000, "c.bin": 3000, "gone.bin": 10}})
    sv.target("gone.bin").unlink()
    audit(sv.manifest, sv.volume())
    os.utime(sv.target("b.bin"))

    calls: list[tuple[str, str, int | None]] = []

    class Recorder:
        def start(self, key: str, label: str, total: int | None) -> None:
            calls.append(("start", key, total))

        def advance(self, key: str, n: int) -> None:
            calls.append(("advance", key, n))

        def finish(self, key: str) -> None:
            calls.append(("finish", key, None))

    audit(sv.manifest, sv.volume(), progress=Recorder())
    assert calls[0] == ("start", FILES, 4) and calls[-1] == ("finish", FILES, None)
    assert sum(n for what, key, n in calls if what == "advance" and key == FILES) == 4
    assert len([c for c in calls if c[:2] == ("advance", FILES) and c[2]]) >= 2  # a batch at a time
    b = "models/alpha/b.bin"
    assert [c for c in calls if c[1] != FILES] == [
        ("start", b, 2000),
        ("advance", b, 2000),
        ("finish", b, None),
    ]


def test_a_symlinked_folder_is_refused_for_every_file_under_it(
    synthetic_volume: Callable[..., SyntheticVolume], tmp_path: Path
) -> None:
    sv = synthetic_volume({"alpha": {"sub/a.bin": 100, "sub/b.bin": 100, "c.bin": 100}})
    real = tmp_path / "elsewhere"
    (sv.root / "models/alpha/sub").rename(real)
    (sv.root / "models/alpha/sub").symlink_to(real)
    report = audit(sv.manifest, sv.volume())
    assert statuses(report) == {"sub/a.bin": "missing", "sub/b.bin": "missing", "c.bin": "ok"}
    for fa in report.files[:2]:
        assert fa.detail == (
            f"models/alpha/sub is a symlink (on the way to {fa.file.target}); the volume keeps real folders"
        )


# -- both backends: a folder, and an S3 volume on moto_server (mt_assets_tests/volume/backends.py) -----


def test_a_complete_volume_is_ok_and_audited_again_without_reading_a_byte(volume_backend: Backend) -> None:
    b = volume_backend.fill()
    assert b.manifest is not None
    first = audit(b.manifest, b.volume())
    assert first.complete
    assert first.bytes_read == sum(len(f.data) for f in b.files)
    second = audit(b.manifest, b.volume())  # a fresh volume object: the record or cache on the volume answers
    assert second.complete
    assert second.bytes_read == 0
    assert second.totals.present_bytes == sum(len(f.data) for f in b.files)


def test_each_kind_of_damage_gets_its_status_on_both_backends(volume_backend: Backend) -> None:
    b = volume_backend.fill(
        {"alpha": dict.fromkeys(["gone.bin", "short.bin", "other.bin", "bigger.bin", "fine.bin"], 5000)}
    )
    assert b.manifest is not None
    audit(b.manifest, b.volume())  # recorded: every later change must be seen despite the record
    b.delete(b.target("gone.bin"))
    b.put(b.target("short.bin"), b.data("short.bin")[:4000])
    other = bytearray(b.data("other.bin"))
    other[1234] ^= 0x01
    b.put(b.target("other.bin"), bytes(other))  # same size, one bit: a new ETag / a new ctime
    b.put(b.target("bigger.bin"), b.data("bigger.bin") + b"tail")
    b.put("models/alpha/extra.bin", b"not in the manifest")
    report = audit(b.manifest, b.volume())
    assert statuses(report) == {
        "gone.bin": "missing",
        "short.bin": "size_mismatch",
        "other.bin": "hash_mismatch",
        "bigger.bin": "size_mismatch",
        "fine.bin": "ok",
    }
    assert report.bytes_read == 5000  # other.bin alone was read again
    by_path = {fa.file.path: fa for fa in report.files}
    assert by_path["short.bin"].detail == "size is 4000, expected 5000"
    assert by_path["other.bin"].detail.startswith("sha256 is ")


def test_unpinned_files_are_hashed_and_reported_unpinned_on_both_backends(volume_backend: Backend) -> None:
    b = volume_backend.fill()
    unpinned = parse_manifest(manifest_yaml(b.files, pin=False), "unpinned.yaml")
    report = audit(unpinned, b.volume())
    assert set(statuses(report).values()) == {"unpinned"}
    assert {fa.sha256 for fa in report.files} == {f.sha256 for f in b.files}


def test_a_full_audit_reads_every_file_again_on_both_backends(volume_backend: Backend) -> None:
    b = volume_backend.fill()
    assert b.manifest is not None
    audit(b.manifest, b.volume())
    report = audit(b.manifest, b.volume(), full=True, jobs=2)
    assert report.complete
    assert report.bytes_read == sum(len(f.data) for f in b.files)


def test_space_accounting_and_fit_on_both_backends(volume_backend: Backend) -> None:
    b = volume_backend.fill(
        {"alpha": {"a.bin": 10_000, "b.bin": 20_000}, "beta": {"c.bin": 5_000}}, place=False
    )
    assert b.manifest is not None
    report = audit(b.manifest, b.volume(capacity=1_000_000))
    assert report.totals.to_fetch_bytes == 35_000
    assert report.fits
    tight = audit(b.manifest, b.volume(capacity=35_000))
    assert tight.free_bytes is not None and tight.free_bytes <= 35_000
    assert not tight.fits  # 35,000 to fetch + 5% margin > 35,000 free
