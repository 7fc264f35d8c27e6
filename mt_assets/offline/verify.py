"""The offline proof: run the worker's real load with the network cut and judge every file it touched.

`verify_offline(volume, manifest)` starts `probe.py` in a fresh interpreter (see its docstring
for the protocol: a SPEC file in, one REPORT JSON file out), inside a fresh network namespace
where the kernel allows one (isolation.py: the report's `isolation` says which cut was used, and
`isolation_reason` why not the namespace), with

    HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1
    HF_HOME, XDG_CACHE_HOME, TMPDIR, TORCH_HOME, CUDA_CACHE_PATH   empty folders of a private
                                                                   temporary *sandbox*

so nothing cached from an earlier run can stand in for the volume, then sorts every path the
load opened or mapped (resolved through symlinks) into one of:

    volume    under the volume root; a file the manifest declares (its target), or a file of a
              bf16 repack that its repack.json lists (and the hash cache that verifies it). Fine.
    undeclared  under the volume root but not declared (a stray file the loader picked up,
              or the volume's .mt/ state). A violation: "nothing loads a file that the
              manifest does not declare".
    python    the interpreter and its libraries: sys.prefix, sys.base_prefix, exec prefixes,
              the stdlib and site-packages folders (user site included), the interpreter binary
    project   the mt_assets package's own source folder
    system    what any process reads: /proc, /sys, /dev; shared libraries (*.so*) outside home
              folders and temporary folders; locale, zoneinfo, gconv, CA certificates; a few
              /etc files (ld.so.cache, localtime, timezone, mime.types, os-release, passwd,
              group, nsswitch.conf)
    sandbox   the sandbox above: it starts empty, so what is read there was written by this run
    outside   everything else: a config in ~/.cache/huggingface, a file in /tmp, a model in the
              current folder. A violation, listed by path with the unit that touched it.

Directories (opened to list or to sync) are not files and are not judged. A file that was
asked for but does not exist still counts: trying ~/.cache/huggingface/token is already a
dependency on something that is not the volume.

The verification passes only with no network attempt (refused socket calls, the Hub client's
own offline refusals, and in a network namespace any attempt its counters saw), no outside
file, no undeclared file and every unit loaded. A declared file that is missing fails its unit,
and is listed under `missing`.

One load is one dtype. `prove_offline` proves the load paths a worker may take, one probe each
(`dtype`, the choice):

    float32    the CPU load: the originals
    bfloat16   the GPU load: the bf16 repacks where usable (their files, listed in repack.json,
               count as declared), else the originals
    all        both
    auto       float32, and bfloat16 too when the volume holds a repack (its repack.json) for
               a unit being proved; without one a bf16 load reads the files float32 does

and passes only when every path does (`OfflineProof`: the reports by dtype, under one isolation).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mt_assets.manifest import Manifest, ManifestError
from mt_assets.manifest.lockfile import to_yaml
from mt_assets.offline.isolation import NETWORK_NAMESPACE, Isolation, resolve_isolation
from mt_assets.offline.overrides import check_unit
from mt_assets.volume import LocalVolume

PROBE = Path(__file__).with_name("probe.py")
PROJECT_DIR = Path(__file__).resolve().parent.parent  # the mt_assets package
DEFAULT_TIMEOUT = 1800.0  # seconds; the real 480p load reads ~80 GB
DTYPES = ("float32", "bfloat16")  # the load paths: the originals; the repacks where usable
DTYPE_CHOICES = ("auto", *DTYPES, "all")

CATEGORIES = ("volume", "undeclared", "python", "project", "system", "sandbox", "outside")
SYSTEM_PREFIXES = (
    "/proc/",
    "/sys/",
    "/dev/",
    "/usr/lib/locale/",
    "/usr/share/locale/",
    "/usr/share/zoneinfo/",
    "/usr/share/ca-certificates/",
    "/etc/ssl/",
    "/etc/pki/",
    "/usr/lib/ssl/",
)
SYSTEM_FILES = frozenset(
    {
        "/etc/ld.so.cache",
        "/etc/ld.so.preload",
        "/etc/localtime",
        "/etc/timezone",
        "/etc/mime.types",
        "/etc/os-release",
        "/usr/lib/os-release",
        "/etc/passwd",
        "/etc/group",
        "/etc/nsswitch.conf",
    }
)
_SHARED_LIBRARY = re.compile(r"\.so(\.[0-9]+)*$")
_GCONV = re.compile(r"^/usr/lib(64)?/([^/]+/)?gconv/")


@dataclass(frozen=True)
class NetworkAttempt:
    event: str  # the audit event (socket.getaddrinfo, ...) or huggingface_hub.offline
    host: str
    port: int | None
    unit: str | None
    detail: str
    stack: tuple[str, ...]
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "event": self.event,
            "unit": self.unit,
            "detail": self.detail,
            "count": self.count,
            "stack": list(self.stack),
        }

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host


@dataclass(frozen=True)
class TouchedFile:
    path: str  # resolved, absolute
    category: str  # one of CATEGORIES
    unit: str | None  # the load unit running when it was touched (None: before or after the load)
    via: str  # open, safetensors, mmap, fd
    mode: str
    exists: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "unit": self.unit,
            "via": self.via,
            "mode": self.mode,
            "exists": self.exists,
        }


@dataclass(frozen=True)
class UnitResult:
    unit: str
    components: tuple[str, ...]
    status: str  # loaded | failed | not_run
    seconds: float | None
    bytes: int | None
    files: tuple[str, ...]  # volume targets touched while this unit loaded
    error: str | None = None
    repack: str | None = None  # the repack the load read instead of the originals (bf16), if any

    def to_json(self) -> dict[str, Any]:
        return {
            "components": list(self.components),
            "status": self.status,
            "seconds": self.seconds,
            "bytes": self.bytes,
            "files": list(self.files),
            "repack": self.repack,
            "error": self.error,
        }


@dataclass
class OfflineReport:
    profile: str
    volume: str
    units: list[UnitResult]
    network_attempts: list[NetworkAttempt]
    touched: list[TouchedFile]
    missing: list[str]  # declared targets of the loaded units that are not on the volume
    errors: list[str] = field(default_factory=list)  # the probe itself: crash, timeout, override not applied
    total_seconds: float = 0.0  # sum of the units' load seconds
    wall_seconds: float = 0.0  # the whole probe, interpreter start and imports included
    overrides: dict[str, str] = field(default_factory=dict)
    hub_offline: bool = True  # HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 were set
    dtype: str = "float32"  # the load's dtype: which path was proved
    isolation: str = "audit-hooks"  # network-namespace | audit-hooks (isolation.py)
    isolation_reason: str | None = None  # why not the namespace; None when it was used

    @property
    def outside_volume(self) -> list[TouchedFile]:
        return _first_per_path(t for t in self.touched if t.category == "outside")

    @property
    def undeclared(self) -> list[TouchedFile]:
        return _first_per_path(t for t in self.touched if t.category == "undeclared")

    @property
    def failed_units(self) -> list[UnitResult]:
        return [u for u in self.units if u.status != "loaded"]

    @property
    def ok(self) -> bool:
        return not (
            self.network_attempts
            or self.outside_volume
            or self.undeclared
            or self.failed_units
            or self.errors
            or self.missing
        )

    @property
    def repacks(self) -> dict[str, str | None]:
        """Unit -> the repack its load read, or None (the originals), for the units that loaded."""
        return {u.unit: u.repack for u in self.units if u.status == "loaded"}

    def files_touched(self) -> dict[str, int]:
        """Distinct files per category."""
        counts = dict.fromkeys(CATEGORIES, 0)
        for t in _first_per_path(self.touched):
            counts[t.category] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "profile": self.profile,
            "volume": self.volume,
            "dtype": self.dtype,
            "isolation": self.isolation,
            "isolation_reason": self.isolation_reason,
            "components": {u.unit: u.to_json() for u in self.units},
            "network_attempts": [a.to_json() for a in self.network_attempts],
            "outside_volume": [t.path for t in self.outside_volume],
            "outside_volume_detail": [t.to_json() for t in self.outside_volume],
            "undeclared": [t.path for t in self.undeclared],
            "missing": list(self.missing),
            "errors": [*(f"{u.unit}: {u.error}" for u in self.units if u.error), *self.errors],
            "files_touched": self.files_touched(),
            "total_seconds": round(self.total_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "overrides": dict(self.overrides),
            "environment": {
                "HF_HUB_OFFLINE": "1" if self.hub_offline else None,
                "TRANSFORMERS_OFFLINE": "1" if self.hub_offline else None,
                "network": "cut (network namespace and audit hook)"
                if self.isolation == NETWORK_NAMESPACE
                else "cut (audit hook)",
            },
        }


@dataclass
class OfflineProof:
    """The proof of every load path asked for: one OfflineReport per dtype, under one isolation."""

    profile: str
    volume: str
    dtype: str  # the choice: auto | float32 | bfloat16 | all
    isolation: Isolation
    reports: list[OfflineReport]
    skipped: dict[str, str] = field(default_factory=dict)  # dtype -> why it was not proved (auto)

    @property
    def ok(self) -> bool:
        return bool(self.reports) and all(r.ok for r in self.reports)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "profile": self.profile,
            "volume": self.volume,
            "dtype": self.dtype,
            "isolation": self.isolation.mode,
            "isolation_reason": self.isolation.reason,
            "dtypes": {r.dtype: r.to_json() for r in self.reports},
            "dtypes_skipped": dict(self.skipped),
        }


def provable_units(manifest: Manifest) -> list[str]:
    """The load units whose components the manifest declares: what `verify_offline` can prove."""
    from mt_assets.models.pipeline import loadable_units

    return loadable_units(manifest)


def prove_offline(
    volume: LocalVolume | str | Path,
    manifest: Manifest,
    *,
    dtype: str = "auto",
    isolation: str | Isolation | None = None,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    hub_offline: bool = True,
) -> OfflineProof:
    """Prove the load paths `dtype` names (see the module docstring), one probe each, float32 first.

    `isolation` is resolved once (isolation.py; None: $MT_OFFLINE_ISOLATION, else auto), so every
    path runs under the same cut; the other arguments are verify_offline's, for every path.
    """
    from mt_assets.models.pipeline import UNITS

    if dtype not in DTYPE_CHOICES:
        raise ManifestError(f"verify-offline: dtype {dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    vol = volume if isinstance(volume, LocalVolume) else LocalVolume(volume)
    cut = resolve_isolation(isolation)
    skipped: dict[str, str] = {}
    if dtype == "auto":
        with_repack = repacked_units(vol, list(only) if only else list(UNITS))
        dtypes = ["float32", "bfloat16"] if with_repack else ["float32"]
        if not with_repack:
            skipped["bfloat16"] = (
                "no repack on the volume for the units proved; a bf16 load reads the files float32 does"
            )
    else:
        dtypes = list(DTYPES) if dtype == "all" else [dtype]
    reports = [
        verify_offline(
            vol,
            manifest,
            only=only,
            overrides=overrides,
            timeout=timeout,
            env=env,
            hub_offline=hub_offline,
            dtype=d,
            isolation=cut,
        )
        for d in dtypes
    ]
    return OfflineProof(manifest.profile, str(vol.root), dtype, cut, reports, skipped)


def repacked_units(volume: LocalVolume, units: Sequence[str]) -> list[str]:
    """The units, of `units`, for which the volume holds a repack (a repack.json, usable or not:
    a bf16 load reads it either way, and a stale or broken one sends the load to the originals)."""
    from mt_assets.models.repack import UNIT_REPACK, manifest_target

    return [u for u in units if u in UNIT_REPACK and volume.path(manifest_target(UNIT_REPACK[u])).is_file()]


def verify_offline(
    volume: LocalVolume | str | Path,
    manifest: Manifest,
    *,
    only: Sequence[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    hub_offline: bool = True,
    keep_sandbox: bool = False,
    dtype: str | None = None,
    isolation: str | Isolation | None = None,
) -> OfflineReport:
    """Prove (or disprove) that `load_pipeline_components` needs nothing but the volume.

    `only` restricts the load units (default: the whole load, the worker's exact call);
    `overrides` is the test seam (overrides.py); `env` adds to the child's environment
    (after the offline settings, so a test can point HF_ENDPOINT somewhere).
    `hub_offline=False` leaves HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE unset: the libraries then
    really try, and the audit hook alone refuses their socket calls (the stricter proof that
    the cut holds without the libraries' cooperation).
    `dtype` (a torch dtype name, e.g. "bfloat16") is passed to the load: a bf16 load reads the
    bf16 repacks where they are usable, whose files (listed in their repack.json) count as
    declared, as does the hash cache their verification reads.
    `isolation`: auto | netns | audit-hooks, or a resolved Isolation (isolation.py); None:
    $MT_OFFLINE_ISOLATION, else auto. An IsolationError when netns is asked for and not available.
    """
    from mt_assets.models.pipeline import UNITS

    vol = volume if isinstance(volume, LocalVolume) else LocalVolume(volume)
    requested = list(only) if only else list(UNITS)
    unknown = [u for u in requested if u not in UNITS]
    if unknown:
        raise ManifestError(f"verify-offline: unknown units {unknown} (known: {', '.join(UNITS)})")
    overrides = dict(overrides or {})
    for unit in overrides:
        try:
            check_unit(unit)
        except ValueError as e:
            raise ManifestError(str(e)) from None
    from mt_assets.models.pipeline import unit_components

    for unit in requested:
        for name in unit_components(manifest, unit):
            manifest.component(name)  # a ManifestError naming the component it lacks
    cut = resolve_isolation(isolation)

    sandbox = Path(tempfile.mkdtemp(prefix="mt-offline-"))
    try:
        return _run(
            vol,
            manifest,
            requested,
            only is not None,
            overrides,
            timeout,
            env or {},
            hub_offline,
            sandbox,
            dtype,
            cut,
        )
    finally:
        if not keep_sandbox:
            shutil.rmtree(sandbox, ignore_errors=True)


def _run(
    vol: LocalVolume,
    manifest: Manifest,
    requested: list[str],
    restricted: bool,
    overrides: dict[str, str],
    timeout: float,
    extra_env: Mapping[str, str],
    hub_offline: bool,
    sandbox: Path,
    dtype: str | None,
    cut: Isolation,
) -> OfflineReport:
    io_dir = sandbox / "io"
    folders = {name: sandbox / name for name in ("hf", "xdg", "tmp", "torch", "cuda")}
    for folder in (io_dir, *folders.values()):
        folder.mkdir()
    manifest_path = io_dir / "manifest.yaml"
    manifest_path.write_text(to_yaml(manifest), encoding="utf-8")
    spec_path, report_path = io_dir / "spec.json", io_dir / "report.json"
    spec = {
        "volume": str(vol.root.resolve()),
        "manifest": str(manifest_path),
        "display": manifest.source,
        "only": requested if restricted else None,
        "overrides": overrides,
        "sys_path": [str(PROJECT_DIR.parent)],
        "dtype": dtype,
        "isolation": cut.mode,
    }
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    child_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(folders["hf"]),
        "XDG_CACHE_HOME": str(folders["xdg"]),
        "TMPDIR": str(folders["tmp"]),
        "TORCH_HOME": str(folders["torch"]),
        "CUDA_CACHE_PATH": str(folders["cuda"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra_env,
    }
    if not hub_offline:
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            child_env.pop(name)
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if name not in extra_env:
            child_env.pop(name, None)  # would point the caches back to where the last run left them
    log_path = io_dir / "probe.log"
    started = time.perf_counter()
    errors: list[str] = []
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(
                cut.command([sys.executable, "-P", str(PROBE), str(spec_path), str(report_path)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=str(folders["tmp"]),
                timeout=timeout,
                check=False,
            )
            returncode: int | None = done.returncode
        except subprocess.TimeoutExpired:
            returncode = None
            errors.append(f"probe: no answer within {timeout:.0f}s; stopped")
    wall = time.perf_counter() - started
    raw: dict[str, Any] = {}
    if report_path.is_file():
        raw = json.loads(report_path.read_text(encoding="utf-8"))
    elif returncode is not None:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        errors.append(
            f"probe: exited with status {returncode} and no report; its last output:\n" + "\n".join(tail)
        )
    if cut.mode == NETWORK_NAMESPACE and raw:
        # The launcher entered the namespace before the probe started; the probe says what it saw.
        seen = (raw.get("isolation") or {}).get("interfaces")
        if seen != ["lo"]:
            errors.append(f"probe: expected a fresh network namespace (only 'lo'), it saw interfaces {seen}")
    report = _judge(vol, manifest, requested, overrides, raw, errors, wall, sandbox)
    report.hub_offline = hub_offline
    report.dtype = dtype or "float32"
    report.isolation, report.isolation_reason = cut.mode, cut.reason
    return report


def _judge(
    vol: LocalVolume,
    manifest: Manifest,
    requested: list[str],
    overrides: dict[str, str],
    raw: dict[str, Any],
    errors: list[str],
    wall: float,
    sandbox: Path,
) -> OfflineReport:
    from mt_assets.models.pipeline import unit_components
    from mt_assets.models.repack import declared_targets

    roots = raw.get("roots") or {}
    classify = Classifier(
        volume=vol.root,
        declared={f.target for f in manifest.files} | declared_targets(vol),
        sandbox=sandbox,
        python_roots=[*roots.get("prefixes", []), *roots.get("site", [])],
        executable=roots.get("executable"),
    )
    touched = [
        TouchedFile(
            path=resolved,
            category=classify(resolved),
            unit=unit,
            via=via,
            mode=mode,
            exists=os.path.exists(resolved),
        )
        for path, mode, via, unit in raw.get("opens", [])
        if not os.path.isdir(resolved := os.path.realpath(path))
    ]
    # A file belongs to the first unit that touched it (a mapping stays in /proc/self/maps
    # while later units load).
    by_unit: dict[str, list[str]] = {}
    for t in _first_per_path(t for t in touched if t.category in ("volume", "undeclared")):
        if t.unit is not None:
            by_unit.setdefault(t.unit, []).append(classify.target(t.path))
    units = [
        UnitResult(
            unit=u["unit"],
            components=tuple(u.get("components") or ()),
            status=u["status"],
            seconds=u.get("seconds"),
            # bytes read: the size of the volume files this unit touched (opened or mapped)
            bytes=sum(_size(vol.root, t) for t in by_unit.get(u["unit"], []))
            if u["status"] == "loaded"
            else None,
            files=tuple(sorted(by_unit.get(u["unit"], []))),
            error=u.get("error"),
            repack=u.get("repack"),
        )
        for u in raw.get("units", [])
    ]
    if not units:  # the probe gave no answer: every unit is unproven
        units = [UnitResult(u, unit_components(manifest, u), "not_run", None, None, ()) for u in requested]
    for unit, applied in (raw.get("overrides") or {}).items():
        if not applied and any(u.unit == unit and u.status != "not_run" for u in units):
            errors.append(
                f"override for unit '{unit}' was not applied: the pipeline no longer calls its loader"
            )
    missing = sorted(
        f.target
        for u in requested
        for name in unit_components(manifest, u)
        for f in manifest.component(name).files
        if not vol.state(f.target).present
    )
    return OfflineReport(
        profile=manifest.profile,
        volume=str(vol.root),
        units=units,
        network_attempts=_merge_attempts(raw.get("network", [])),
        touched=touched,
        missing=missing,
        errors=errors,
        total_seconds=sum(u.seconds or 0.0 for u in units),
        wall_seconds=wall,
        overrides=overrides,
    )


class Classifier:
    """Sorts a resolved absolute path into one of CATEGORIES (see the module docstring)."""

    def __init__(
        self,
        *,
        volume: Path,
        declared: set[str],
        sandbox: Path,
        python_roots: Sequence[str],
        executable: str | None = None,
        project: Path = PROJECT_DIR,
        home: str | None = None,
    ) -> None:
        self.volume = _folder(os.path.realpath(volume))
        self.declared = declared
        self.sandbox = _folder(os.path.realpath(sandbox))
        self.python = [_folder(os.path.realpath(r)) for r in python_roots if r]
        self.executable = os.path.realpath(executable) if executable else None
        # The package's source, and its installed metadata (an editable install's egg-info).
        self.project = [
            _folder(os.path.realpath(p))
            for p in (
                project,
                *project.parent.glob(f"{project.name}*.egg-info"),
                *project.parent.glob(f"{project.name}*.dist-info"),
            )
        ]
        home = home or os.path.expanduser("~")
        # Where a shared library is NOT "the system": people's and temporary folders.
        self.private = [
            _folder(os.path.realpath(p)) for p in (home, tempfile.gettempdir(), "/tmp", "/var/tmp") if p
        ]

    def target(self, path: str) -> str:
        return path[len(self.volume) :]

    def __call__(self, path: str) -> str:
        if path.startswith(self.volume):
            return "volume" if self.target(path) in self.declared else "undeclared"
        if path.startswith(self.sandbox):
            return "sandbox"
        if any(path.startswith(p) for p in self.project):
            return "project"
        if path == self.executable or any(path.startswith(r) for r in self.python):
            return "python"
        if path in SYSTEM_FILES or path.startswith(SYSTEM_PREFIXES) or _GCONV.match(path):
            return "system"
        if _SHARED_LIBRARY.search(path) and not any(path.startswith(p) for p in self.private):
            return "system"
        return "outside"


def _folder(path: str) -> str:
    return path.rstrip("/") + "/"


def _first_per_path(touched: Any) -> list[TouchedFile]:
    seen: dict[str, TouchedFile] = {}
    for t in touched:
        seen.setdefault(t.path, t)
    return list(seen.values())


def _merge_attempts(raw: list[dict[str, Any]]) -> list[NetworkAttempt]:
    """One entry per (event, host, port, unit), with how often it was tried and the first stack."""
    merged: dict[tuple[Any, ...], NetworkAttempt] = {}
    for a in raw:
        key = (a["event"], a["host"], a.get("port"), a.get("unit"))
        if key in merged:
            first = merged[key]
            merged[key] = NetworkAttempt(**{**first.__dict__, "count": first.count + 1})
        else:
            merged[key] = NetworkAttempt(
                event=a["event"],
                host=a["host"],
                port=a.get("port"),
                unit=a.get("unit"),
                detail=a.get("detail", ""),
                stack=tuple(a.get("stack") or ()),
            )
    return list(merged.values())


def _size(volume_root: Path, target: str) -> int:
    try:
        return (volume_root / target).stat().st_size
    except OSError:
        return 0
