"""Shared fixtures: synthetic volumes of random bytes with known hashes, and their manifests; and the
`servers` marker, put on every test that uses a fixture in SERVER_FIXTURES (`make test-fast` leaves
them out)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from mt_assets.manifest import Manifest, parse_manifest
from mt_assets.volume import LocalVolume


@dataclass
class SyntheticFile:
    component: str
    path: str
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class SyntheticVolume:
    """A volume folder, the files that belong on it, and a manifest that pins them."""

    root: Path
    files: list[SyntheticFile]
    manifest: Manifest

    def volume(self, **kwargs: object) -> LocalVolume:
        return LocalVolume(self.root, **kwargs)  # type: ignore[arg-type]

    def target(self, path: str) -> Path:
        f = next(f for f in self.files if f.path == path)
        return self.root / "models" / f.component / f.path

    def write_manifest(self, path: Path) -> Path:
        path.write_text(manifest_yaml(self.files))
        return path

    def place_all(self) -> None:
        for f in self.files:
            dest = self.root / "models" / f.component / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(f.data)


CLI = (sys.executable, "-m", "mt_assets.cli")


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`mt-assets ARGS` in a subprocess of this interpreter: exit status, stdout and stderr as a user sees them."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=timeout)


def manifest_yaml(files: list[SyntheticFile], *, pin: bool = True, profile: str = "synthetic") -> str:
    components: dict[str, list[dict[str, object]]] = {}
    for f in files:
        entry: dict[str, object] = {"path": f.path, "kind": "weights"}
        if pin:
            entry.update(size=len(f.data), sha256=f.sha256)
        components.setdefault(f.component, []).append(entry)
    doc = {
        "profile": profile,
        "components": [
            {"name": name, "repo": f"test/{name}", "revision": "a" * 40, "dir": name, "files": entries}
            for name, entries in components.items()
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def synthetic_volume(tmp_path: Path) -> Callable[..., SyntheticVolume]:
    """Build a volume with `spec` = {component: {path: size}} of random bytes, all placed."""

    def build(
        spec: dict[str, dict[str, int]] | None = None, *, place: bool = True, seed: int = 0
    ) -> SyntheticVolume:
        spec = spec or {"alpha": {"a.bin": 300_000, "sub/b.bin": 70_000}, "beta": {"c.json": 1_234}}
        rng = random.Random(seed)
        files = [
            SyntheticFile(component, path, rng.randbytes(size))
            for component, paths in spec.items()
            for path, size in paths.items()
        ]
        root = tmp_path / "volume"
        root.mkdir(exist_ok=True)
        sv = SyntheticVolume(root, files, parse_manifest(manifest_yaml(files), "synthetic.yaml"))
        if place:
            sv.place_all()
        return sv

    return build


def flip_bit_keep_mtime(path: Path, offset: int = 0) -> None:
    """Flip one bit in place and put the mtime back, as silent corruption would."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny profile's mirror, built once per test session (about 5 MB, a few seconds)."""
    from mt_assets.tiny.profile import build_tiny_mirror

    root = tmp_path_factory.mktemp("tiny") / "mirror"
    build_tiny_mirror(root)
    return root


@pytest.fixture(scope="session")
def tiny_volume(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume provisioned from the tiny mirror through the real provisioner (read-only use)."""
    return provision_tiny("tiny", tiny_mirror, tmp_path_factory.mktemp("tiny-volume"))


def provision_tiny(profile: str, mirror: Path, root: Path) -> Path:
    """A volume at `root` of a shipped tiny profile, provisioned from the tiny mirror by the real provisioner."""
    from mt_assets import provision
    from mt_assets.manifest import load_profile
    from mt_assets.sources import MirrorSource

    volume = LocalVolume(root)
    report = provision.apply(provision.plan(load_profile(profile), volume), MirrorSource(mirror), volume)
    assert report.complete, [r.detail for r in report.results if r.outcome == "failed"]
    return root


@pytest.fixture(scope="session")
def tiny_fusionx_volume(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume of the tiny-fusionx profile (tiny plus its LoRA file), provisioned from the same tiny
    mirror through the real provisioner (read-only use; copy it to damage it)."""
    return provision_tiny("tiny-fusionx", tiny_mirror, tmp_path_factory.mktemp("tiny-fusionx-volume"))


@pytest.fixture(scope="session")
def tiny_int8_volume(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume of the tiny-int8 profile (the quantized DiT and T5 instead of the float ones), read-only use."""
    return provision_tiny("tiny-int8", tiny_mirror, tmp_path_factory.mktemp("tiny-int8-volume"))


@pytest.fixture(scope="session")
def tiny_fp8_fusionx_volume(tiny_mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A volume of the tiny-fp8-fusionx profile (fp8 DiT with the FusionX LoRA merged, fp8 T5), read-only use."""
    return provision_tiny("tiny-fp8-fusionx", tiny_mirror, tmp_path_factory.mktemp("tiny-fp8-fusionx-volume"))


@pytest.fixture(scope="session")
def moto_volume_endpoint() -> Iterator[str]:
    """moto_server holding the S3 volumes of `volume_backend` (one bucket, a prefix per test)."""
    from mt_assets_tests.s3_server import s3_client, s3_server
    from mt_assets_tests.volume.backends import BUCKET

    # Parts of 256 KiB in the tests (S3's own minimum, and moto's default, is 5 MiB).
    with s3_server(env={"S3_UPLOAD_PART_MIN_SIZE": str(64 * 1024)}) as url:
        client = s3_client(url)
        client.create_bucket(Bucket=BUCKET)
        client.close()
        yield url


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.servers)])
def volume_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty volume of each backend (mt_assets_tests/volume/backends.py): a folder, an S3 prefix."""
    from mt_assets_tests.volume.backends import Backend

    if request.param == "local":
        root = tmp_path / "volume"
        root.mkdir()
        return Backend("local", root)
    endpoint = request.getfixturevalue("moto_volume_endpoint")
    prefix = "v-" + hashlib.sha1(request.node.nodeid.encode(), usedforsecurity=False).hexdigest()[:12]
    return Backend("s3", tmp_path, endpoint=endpoint, prefix=prefix)


def rot_bit(volume: LocalVolume, target: str, offset: int = 0) -> None:
    """Corrupt a byte the way failing storage does: the bytes change and no stat field shows it.

    User space cannot change bytes without changing ctime, so the hash cache's row is moved to
    the file's new stat with its old digest: exactly what bit rot under the filesystem leaves.
    """
    path = volume.path(target)
    cached = volume.hash_cache.lookup(target, os.stat(path))
    assert cached is not None, f"{target} is not in the hash cache yet"
    flip_bit_keep_mtime(path, offset)
    volume.hash_cache.store(target, os.stat(path), cached)


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 1m, 200k) mounted at `where`, for a full disk; skips the
    test where mounting needs a privilege this machine does not give (CI runs as root)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'needs root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# Two tiers: `make test` runs every test; `make test-fast` (`pytest -m 'not servers and not slow'`) leaves
# out the two markers set here, at collection, from the lists below. Each entry names a file by the end of
# its path (a module moved to another folder still matches) and, after `::`, a fixture or a test; an entry
# that matches no file, or several, or names what the file does not define, stops the run, since its tests
# would otherwise fall into the fast tier unnoticed.
#
# `servers`: the tests using, directly or through another fixture, one of these fixtures, each of which
# starts a server as a process of its own, or a browser. Several modules have a fixture of the same name
# that starts nothing (`endpoint`, `shared`), hence the paths. In-process loopback doubles (runpod_endpoint,
# FaultyProxy, error_server, ProgressRecorder) are not servers here: they start in milliseconds, and the
# clients' unit tests are written against them. A module that starts a server outside a fixture sets
# `pytestmark = pytest.mark.servers` itself.
SERVER_FIXTURES = (
    # moto_server (S3) on loopback
    "mt_assets_tests/conftest.py::moto_volume_endpoint",  # requested by volume_backend's "s3" case, marked there too
    "test_provision_s3.py::endpoint",
    "sources/test_s3.py::endpoint",
    "test_media.py::endpoint",
    "volume/test_s3_probe.py::endpoint",
    "test_s3_proxy_faults.py::endpoint",
    # olah, the hub-compatible server
    "test_lock.py::hub",
    "sources/test_hub.py::hub",
    "defs/conftest.py::hub",
    # the RunPod SDK's local API server running our worker (with moto_server beside it in test_server)
    "worker/test_server.py::server",
    "defs/test_renders_runpod_worker.py::shared",
    # `dagster dev` (webserver and daemon), which the tests using it drive with headless Chromium
    "defs/test_ui.py::dagster_dev",
    "defs/test_renders_ui.py::renders_ui",
    # embedded PostgreSQL, and dagster-webserver and dagster-daemon on it (`make serve`)
    "deploy/conftest.py::postgres",
    "deploy/conftest.py::plane",
    "deploy/test_serve.py::served",
)

# `slow`: tests without a server that each take 5-60 s on a 2-core machine (several times that while other
# work shares it), because they run the production code in fresh Python processes (the demo, the CLI
# rendering, the worker, concurrent scanners, the benchmark's cold loads, a load measured for memory),
# run offline proofs in network namespaces, or materialize the tiny profile through Dagster. A whole
# module, or one test (or one parameter) of it. The fast tier keeps the rest of what they cover: the
# in-process renders and their goldens, the offline proof's own tests (offline/test_verify.py), the
# RunPod backend through Dagster, the CLI's refusals, the checks that the worker never imports dagster.
SLOW_TESTS = (
    "defs/test_demo.py",  # `make demo`'s own command, end to end (about 60 s)
    "defs/test_renders.py",  # the tiny profile materialized, then renders through Dagster (about 50 s)
    "defs/test_benchmark_report.py",  # the same, then the benchmark's cold loads in fresh processes
    "defs/test_repacks.py",  # the tiny profile materialized, repacks made and checked
    "defs/test_offline_cache.py",  # the offline proof as an asset: proofs in namespaces, repacks made
    "offline/test_verify_repacks.py",  # offline proofs of both load paths, repacks made
    "offline/test_isolation.py::test_a_native_connection_fails_in_the_namespace_and_so_does_the_proof",
    "offline/test_isolation.py::test_the_audit_hook_alone_does_not_see_a_native_connection_and_the_report_says_so",
    "offline/test_isolation.py::test_where_the_kernel_refuses_namespaces_auto_falls_back_and_netns_refuses_to_run",
    "worker/test_process.py::test_the_local_run_of_test_input_json_renders_offline_without_dagster",
    "defs/test_renders_runpod.py::test_terminating_the_run_cancels_the_runpod_job_and_sends_nothing_more"
    "[multiprocess]",  # a run in a child process (the in_process case stays fast)
    "defs/test_renders_runpod.py::test_partitions_render_at_once_up_to_the_runpod_pools_limit",
    "test_render.py::test_cli_renders_a_job_and_prints_one_json_document",
    "test_render.py::test_a_render_killed_midway_leaves_no_mp4",
    "test_queue.py::test_concurrent_scanners_in_processes_accept_each_entry_once",
    "test_queue.py::test_cli_jobs_submit_and_list",
    "bench/test_cold_start.py::test_a_cold_load_runs_in_a_fresh_process_with_the_files_evicted",
    "bench/test_cold_start.py::test_time_to_first_step_is_measured_cold_with_the_dit_in_the_background_and_without",
    "models/test_bounded_load.py::test_transient_host_memory_of_the_dit_load_stays_under_one_and_a_half_shards",
    # 20,000 files written, then audited twice by the CLI in fresh processes on a pseudo-terminal, memory measured
    "test_audit_scale.py::test_an_audit_of_twenty_thousand_files_shows_files_checked_as_it_goes_in_memory_for_a_million",
    "tiny/test_profile.py::test_cli_tiny_build_then_provision_the_tiny_profile",
    "render/test_one_renderer.py",
    # two tiny renders by `mt-assets render` in fresh processes, low VRAM and without (about 20 s)
    "test_low_vram.py::test_cli_render_with_mt_persistent_params_0_gives_the_same_frames",
    # hostile input refused by the CLI in fresh processes whose peak memory is measured (about 13 s each)
    "test_hostile.py::test_a_poison_job_file_is_refused_by_the_cli_in_one_line",
    "test_hostile.py::test_a_job_file_over_the_size_limit_is_refused_before_it_is_read",
    "test_hostile.py::test_a_prompt_over_the_limit_is_refused_naming_the_field",
    "test_media_limits.py::test_cli_refuses_amplifying_media_in_one_line_naming_the_field_and_stays_small",
    # `mt-assets render` runs in fresh processes (dry runs against the render, the LoRA twin's render)
    "test_fast_renders.py::test_dry_run_says_what_the_render_then_runs",
    "test_fast_renders.py::test_dry_run_without_teacache_needs_no_model",
    "test_fast_renders.py::test_dry_run_without_json_says_the_cost_in_one_line_and_what_to_run_next",
    "test_fast_renders.py::test_a_fusionx_render_on_tiny_fusionx_merges_its_lora_and_runs_16_evaluations_per_clip",  # the tiny profile materialized, one job through the CLI, Dagster and the worker
)


def _tier_entries(name: str, entries: tuple[str, ...]) -> list[tuple[str, str]]:
    """(path suffix, fixture or test name or "") of each entry, each checked against the files."""
    tests = Path(__file__).parent
    parsed, stale = [], []
    for entry in entries:
        suffix, _, what = entry.partition("::")
        function = what.split("[")[0]
        files = [
            f
            for f in tests.rglob(Path(suffix).name)
            if f.as_posix().endswith("/" + suffix) and (not function or f"def {function}(" in f.read_text())
        ]
        if len(files) != 1:
            stale.append(entry)
        parsed.append((suffix, what))
    if stale:
        raise pytest.UsageError(f"{name} in {__file__} names no file or definition, or several: {stale}")
    return parsed


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `servers` the tests whose fixture closure holds one of SERVER_FIXTURES, `slow` SLOW_TESTS."""
    servers = _tier_entries("SERVER_FIXTURES", SERVER_FIXTURES)
    slow = _tier_entries("SLOW_TESTS", SLOW_TESTS)
    for item in items:
        path = item.path.as_posix()
        if any(
            path.endswith("/" + suffix) and what in ("", item.name, getattr(item, "originalname", None))
            for suffix, what in slow
        ):
            item.add_marker(pytest.mark.slow)
        info = getattr(item, "_fixtureinfo", None)  # None for items that are not Python functions
        used = {
            (name, defs[-1].func.__code__.co_filename)  # the definition in use
            for name, defs in (info.name2fixturedefs.items() if info else ())
            if defs
        }
        if any(
            name == fixture and Path(file).as_posix().endswith("/" + suffix)
            for name, file in used
            for suffix, fixture in servers
        ):
            item.add_marker(pytest.mark.servers)
