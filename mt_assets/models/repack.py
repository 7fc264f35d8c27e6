"""bf16 repacks: derived copies of the DiT (+ adapter) and of CLIP's vision tower, for faster cold starts.

Written from the verified source files into the volume, next to `models/` (see DESIGN.md):

    repacks/transformer_bf16/
        diffusion_pytorch_model-0000N-of-0000M.safetensors   one per source file: the Wan DiT
                                 shards, in the order of Wan's index, then multitalk.safetensors
        diffusion_pytorch_model.safetensors.index.json        {"metadata": {...}, "weight_map":
                                 {key: shard}}, DiT and adapter keys (so `load_multitalk_transformer`
                                 reads it with multitalk=None; the config stays the source's config.json)
        repack.json
    repacks/clip_vision_bf16/
        visual.safetensors       the `visual.*` keys of Wan's CLIP .pth (the text tower and
                                 `log_scale` dropped)
        repack.json

Keys keep the reference (Wan / MultiTalk) names, so the loaders apply the same conversion to a
repack as to the originals. Floating tensors are stored as bf16, except the DiT tensors that the
loader keeps in float32 whatever the dtype (diffusers' `_keep_in_fp32_modules`: the time
embedder, norms, modulation tables): those are stored in float32 with the file's exact values.
Loading a repack as bf16 therefore gives the same weights, bit for bit, as loading the originals
as bf16 (the cast is the same round-to-nearest-even, done once here instead of at every load).

repack.json (written last; a repack without it does not exist):

    name      transformer_bf16 | clip_vision_bf16
    dtype     bfloat16
    files     [{path, size, sha256}]   path relative to the repack's folder
    sources   [{target, sha256}]       every source file it came from, as the manifest pinned it

Memory: one source file at a time is read (the load strategy's buffer), converted, and written
tensor by tensor, so the peak is about 1.5x the largest source file (real set: the 9.9 GB fp32
adapter, ~15 GB), not the whole DiT.

Every file is written atomically (staged under .mt/staging, hashed while written, fsynced,
renamed: `LocalVolume.writing`); an existing repack.json is removed first, so a repack that is
being rewritten (or was left half-rewritten) is never used.

A loader uses a repack (`usable_repack`) only for a bf16 load, when repack.json's sources equal
the manifest's current pins for the unit's components, and every file it lists has its recorded
size and sha256 (through the volume's hash cache: a stat per file when nothing changed). A stale
repack is skipped quietly (log); a repack whose bytes fail is skipped with a RepackWarning naming
the file, and the originals are loaded.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.volume import LocalVolume
from mt_assets.volume.local import STATE_DIR

log = logging.getLogger(__name__)

REPACKS_DIR = "repacks"
MANIFEST_NAME = "repack.json"
DTYPE = "bfloat16"
TRANSFORMER = "transformer_bf16"
CLIP_VISION = "clip_vision_bf16"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CLIP_FILE_NAME = "visual.safetensors"

# repack -> the manifest components it is made from (and the load unit that uses it)
REPACKS: dict[str, tuple[str, ...]] = {TRANSFORMER: ("wan-dit", "multitalk"), CLIP_VISION: ("clip",)}
UNIT_REPACK: dict[str, str] = {"transformer": TRANSFORMER, "clip": CLIP_VISION}


class RepackError(ValueError):
    """A repack cannot be written (a source that is not verified, not pinned, or unreadable)."""


class RepackWarning(UserWarning):
    """A repack is on the volume but its bytes do not match repack.json: the originals are loaded."""


@dataclass(frozen=True)
class RepackFile:
    path: str  # relative to the repack's folder
    size: int
    sha256: str


@dataclass(frozen=True)
class RepackManifest:
    name: str
    dtype: str
    files: tuple[RepackFile, ...]
    sources: tuple[tuple[str, str], ...]  # (target, sha256)
    seconds: float = 0.0  # how long writing it took (not part of repack.json's identity)

    @property
    def folder(self) -> str:
        return f"{REPACKS_DIR}/{self.name}"

    def target(self, path: str) -> str:
        return f"{self.folder}/{path}"

    @property
    def targets(self) -> tuple[str, ...]:
        """Every file of the repack relative to the volume, repack.json included."""
        return (*(self.target(f.path) for f in self.files), self.target(MANIFEST_NAME))

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "sources": [{"target": t, "sha256": s} for t, s in self.sources],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str) -> RepackManifest:
        try:
            return cls(
                name=str(doc["name"]),
                dtype=str(doc["dtype"]),
                files=tuple(
                    RepackFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]
                ),
                sources=tuple((str(s["target"]), str(s["sha256"])) for s in doc["sources"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise RepackError(f"{where}: not a repack manifest ({type(e).__name__}: {e})") from None


def manifest_target(name: str) -> str:
    return f"{REPACKS_DIR}/{name}/{MANIFEST_NAME}"


def source_files(manifest: Manifest, name: str) -> tuple[ManifestFile, ...]:
    return tuple(f for c in REPACKS[name] for f in manifest.component(c).files)


def applicable_repacks(manifest: Manifest) -> tuple[str, ...]:
    """The repacks a profile can use: those whose source components it declares, and never for a
    quantized unit (a quantized DiT, models/quant.py, is read from its own smaller file; the
    transformer repack is made from the float shards such a profile does not have)."""
    names = {c.name for c in manifest.components}
    return tuple(
        name
        for unit, name in UNIT_REPACK.items()
        if manifest.quantized(unit) is None and set(REPACKS[name]) <= names
    )


def expected_sources(manifest: Manifest, name: str) -> tuple[tuple[str, str], ...]:
    """(target, sha256) of every source file as the manifest pins it now (sorted by target)."""
    return tuple(
        sorted((f.target, f.sha256 or f.git_sha1 or "unpinned") for f in source_files(manifest, name))
    )


def read_repack(volume: LocalVolume, name: str) -> RepackManifest | None:
    """The repack's manifest, or None when it has none (not written, or being rewritten)."""
    path = volume.root / manifest_target(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RepackError(f"{manifest_target(name)}: not JSON ({e})") from None
    return RepackManifest.from_json(doc, manifest_target(name))


def verify_repack(volume: LocalVolume, repack: RepackManifest, *, use_cache: bool = True) -> list[str]:
    """Problems with the repack's bytes, one line per file ([] = every file matches repack.json)."""
    problems: list[str] = []
    for f in repack.files:
        target = repack.target(f.path)
        state = volume.state(target)
        if not state.present:
            problems.append(f"{target}: {state.problem}")
            continue
        assert state.st is not None
        if state.st.st_size != f.size:
            problems.append(f"{target}: size is {state.st.st_size}, repack.json says {f.size}")
            continue
        digest, _ = volume.digest(target, state.st, use_cache=use_cache)
        if digest.sha256 != f.sha256:
            problems.append(f"{target}: sha256 is {digest.sha256[:12]}…, repack.json says {f.sha256[:12]}…")
    return problems


def usable_repack(volume: LocalVolume, manifest: Manifest, name: str) -> RepackManifest | None:
    """The repack if a bf16 load may use it (see the module docstring); else None, with a reason logged."""
    try:
        repack = read_repack(volume, name)
    except RepackError as e:
        warnings.warn(f"{e}; loading the originals", RepackWarning, stacklevel=2)
        return None
    if repack is None:
        return None
    if repack.dtype != DTYPE or repack.name != name:
        log.info(
            "%s: %s %s, not %s %s; loading the originals",
            repack.folder,
            repack.name,
            repack.dtype,
            name,
            DTYPE,
        )
        return None
    if tuple(sorted(repack.sources)) != expected_sources(manifest, name):
        log.info(
            "%s: made from other source files than the manifest pins (stale); loading the originals",
            repack.folder,
        )
        return None
    problems = verify_repack(volume, repack)
    if problems:
        warnings.warn(
            f"repack {repack.folder} fails verification: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            + "; loading the originals",
            RepackWarning,
            stacklevel=2,
        )
        return None
    return repack


# ---------------------------------------------------------------------- writing
def repack_transformer(volume: LocalVolume, manifest: Manifest, *, strategy: Any = None) -> RepackManifest:
    """Write repacks/transformer_bf16 from the verified DiT shards and adapter; one source file at a time."""
    import torch

    from mt_assets.models.dit import build_multitalk_transformer, kept_in_fp32
    from mt_assets.models.dit_loading import ADAPTER_FILE_NAME, diffusers_to_reference_key, read_wan_config
    from mt_assets.models.dit_loading import INDEX_NAME as WAN_INDEX
    from mt_assets.models.reading import iter_safetensors

    started = time.perf_counter()
    _check_sources(volume, manifest, TRANSFORMER)
    wan_dir = volume.root / "models" / manifest.component("wan-dit").dir
    adapter = volume.root / "models" / manifest.component("multitalk").dir / ADAPTER_FILE_NAME
    config = read_wan_config(wan_dir / "config.json")
    model = build_multitalk_transformer(config, device="meta")
    fp32_keys = {diffusers_to_reference_key(k) for k in model.state_dict() if kept_in_fp32(model, k)}
    del model
    weight_map: dict[str, str] = json.loads((wan_dir / WAN_INDEX).read_text())["weight_map"]
    inputs = [wan_dir / shard for shard in sorted(set(weight_map.values()))] + [adapter]

    def convert(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
        for key, tensor in iter_safetensors(path, strategy):
            if tensor.is_floating_point():
                tensor = tensor.to(torch.float32 if key in fp32_keys else torch.bfloat16)
            yield key, tensor

    with _Writer(volume, TRANSFORMER) as writer:
        index: dict[str, str] = {}
        total = 0
        for n, path in enumerate(inputs, 1):
            name = f"diffusion_pytorch_model-{n:05d}-of-{len(inputs):05d}.safetensors"
            tensors = dict(convert(path))  # one source file's tensors, converted: the memory bound
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            writer.write_safetensors(name, tensors, {"format": "pt", "source": path.name})
            index.update(dict.fromkeys(tensors, name))
            del tensors
        doc = {"metadata": {"total_size": total, "dtype": DTYPE}, "weight_map": dict(sorted(index.items()))}
        writer.write_bytes(INDEX_NAME, json.dumps(doc, indent=2).encode())
        return writer.commit(expected_sources(manifest, TRANSFORMER), started)


def repack_clip_vision(volume: LocalVolume, manifest: Manifest) -> RepackManifest:
    """Write repacks/clip_vision_bf16: the `visual.*` tensors of Wan's CLIP .pth in bf16 (text tower dropped)."""
    import torch

    from mt_assets.models.checkpoints import load_pth

    started = time.perf_counter()
    _check_sources(volume, manifest, CLIP_VISION)
    [source] = manifest.component("clip").files
    state = load_pth(volume.path(source.target))  # memory-mapped: only the visual tensors are read
    visual = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
        for k, v in state.items()
        if k.startswith("visual.")
    }
    del state
    with _Writer(volume, CLIP_VISION) as writer:
        writer.write_safetensors(CLIP_FILE_NAME, visual, {"format": "pt", "source": source.path})
        return writer.commit(expected_sources(manifest, CLIP_VISION), started)


def write_repack(
    volume: LocalVolume, manifest: Manifest, name: str, *, strategy: Any = None
) -> RepackManifest:
    if name == TRANSFORMER:
        return repack_transformer(volume, manifest, strategy=strategy)
    if name == CLIP_VISION:
        return repack_clip_vision(volume, manifest)
    raise RepackError(f"repack {name!r}: unknown (known: {', '.join(REPACKS)})")


def _check_sources(volume: LocalVolume, manifest: Manifest, name: str) -> None:
    """Every source file pinned by sha256, on the volume, with that sha256 (hash cache)."""
    for f in source_files(manifest, name):
        if f.sha256 is None:
            raise RepackError(
                f"repack {name}: source {f.target} is not pinned by sha256; lock the manifest first"
            )
        state = volume.state(f.target)
        if not state.present or state.st is None:
            raise RepackError(f"repack {name}: source {f.target} is {state.problem}; provision it first")
        digest, _ = volume.digest(f.target, state.st)
        if digest.sha256 != f.sha256:
            raise RepackError(
                f"repack {name}: source {f.target}: sha256 is {digest.sha256[:12]}…, expected {f.sha256[:12]}…;"
                " not repacked"
            )


def _st_dtype(dtype: Any) -> str:
    """The safetensors name of a torch dtype ("BF16", "F32", ...)."""
    from mt_assets.models.reading import _DTYPES

    return next(name for name, dt in _DTYPES.items() if dt == dtype)


def _tensor_bytes(t: Any) -> Any:
    """A callable giving the tensor's bytes (little-endian, C order) when it is written, not before."""
    import torch

    return lambda: (
        memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B") if t.numel() else b""
    )


class _Writer:
    """Writes one repack's files atomically; repack.json last (and the old one first removed)."""

    def __init__(self, volume: LocalVolume, name: str) -> None:
        self.volume = volume
        self.name = name
        self.folder = f"{REPACKS_DIR}/{name}"
        self.files: list[RepackFile] = []

    def __enter__(self) -> _Writer:
        old = self.volume.path(f"{self.folder}/{MANIFEST_NAME}")
        old.unlink(missing_ok=True)  # from here on the repack does not exist until commit()
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def write_safetensors(self, path: str, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
        """The safetensors format written tensor by tensor (no second copy of the file in memory):
        8-byte little-endian header length, the JSON header padded with spaces to 8 bytes, the data."""
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        for key, t in tensors.items():
            size = t.numel() * t.element_size()
            header[key] = {
                "dtype": _st_dtype(t.dtype),
                "shape": list(t.shape),
                "data_offsets": [offset, offset + size],
            }
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        parts = (len(raw).to_bytes(8, "little") + raw, *(_tensor_bytes(t) for t in tensors.values()))
        self.write_bytes(path, parts)

    def write_bytes(self, path: str, data: bytes | tuple[Any, ...]) -> RepackFile:
        with self.volume.writing(f"{self.folder}/{path}") as w:
            for part in data if isinstance(data, tuple) else (data,):
                w.write(part if isinstance(part, bytes) else part())
            digest = w.commit()
        f = RepackFile(path, digest.size, digest.sha256)
        self.files.append(f)
        return f

    def commit(self, sources: tuple[tuple[str, str], ...], started: float) -> RepackManifest:
        repack = RepackManifest(self.name, DTYPE, tuple(self.files), sources)
        with self.volume.writing(f"{self.folder}/{MANIFEST_NAME}") as w:
            w.write(json.dumps(repack.to_json(), indent=2).encode())
            w.commit()
        keep = {f.path for f in self.files} | {MANIFEST_NAME}
        for stray in (self.volume.root / self.folder).iterdir():  # an earlier repack's extra shards
            if stray.is_file() and stray.name not in keep:
                stray.unlink()
        return RepackManifest(**{**repack.__dict__, "seconds": time.perf_counter() - started})


def repack_inputs(manifest: Manifest, repack: RepackManifest) -> list[str]:
    """The volume targets a load from this repack reads: its files, and the DiT's config.json."""
    extra = [f"models/{manifest.component('wan-dit').dir}/config.json"] if repack.name == TRANSFORMER else []
    return [*extra, *(repack.target(f.path) for f in repack.files)]


def declared_targets(volume: LocalVolume) -> set[str]:
    """What the offline proof counts as declared besides the manifest: each repack's files as its
    repack.json lists them, and the hash cache that verifying them reads (when a repack exists)."""
    targets: set[str] = set()
    for name in REPACKS:
        try:
            repack = read_repack(volume, name)
        except RepackError:
            continue
        if repack is not None:
            targets.update(repack.targets)
    if targets:
        targets.update({f"{STATE_DIR}/hashes.sqlite", f"{STATE_DIR}/hashes.sqlite-journal"})
    return targets


def unvouched_repacks(manifest: Manifest, volume: LocalVolume) -> dict[str, str]:
    """Repacks a bf16 load would verify by hashing (a file at its size without a current hash cache
    row): {name: the first such file}. Repacks it would skip anyway (absent, stale, unreadable
    repack.json) or reject from stat and the cache alone are not listed."""
    from mt_assets.volume.hashcache import CACHE_NAME, ReadOnlyHashCache

    found: dict[str, str] = {}
    cache = ReadOnlyHashCache(volume.state_dir / CACHE_NAME)
    try:
        for name in applicable_repacks(manifest):
            try:
                repack = read_repack(volume, name)
            except RepackError:
                continue
            if (
                repack is None
                or repack.dtype != DTYPE
                or tuple(sorted(repack.sources)) != expected_sources(manifest, name)
            ):
                continue
            for f in repack.files:
                target = repack.target(f.path)
                state = volume.state(target)
                if state.st is None or not state.present or state.st.st_size != f.size:
                    continue
                if cache.lookup(target, state.st) is None:
                    found[name] = f"{target}: no hash cache row for its current stat"
                    break
    finally:
        cache.close()
    return found
