"""One cold load in this fresh process; prints one JSON line. Run by mt_assets.bench.cold_start.

    python -m mt_assets.bench.probe VOLUME MANIFEST_YAML STRATEGY DTYPE UNIT[,UNIT...]

Memory is read from /proc/self/status: VmRSS after the imports, then per unit the RSS before it and
the high-water mark VmHWM during it (reset before each unit by writing 5 to /proc/self/clear_refs;
where that is refused the marks are cumulative and `hwm_reset` says so). ru_maxrss would not do:
Linux carries the parent's peak into a child across fork and exec.

Every byte a unit holds is read within its seconds. On the CPU a tensor kept in its file's dtype
stays memory-mapped and would be read only when first touched (T5's, the VAE's), while a GPU worker
copies every byte to the device during the load: so after each unit its still-mapped tensors are
read here, the strategy's way (`warm_tensors`; for mmap, a page fault per page), inside the unit's
time (`mapped_bytes` says how many bytes that was).

Printed (files: what the unit read, relative to the volume: the originals or a repack):
{"rss_after_imports", "import_seconds", "hwm_reset", "units": {unit: {"seconds", "bytes",
"rss_before", "peak_rss", "files", "mapped_bytes"}}, "dit_kept_bytes"} (bytes of the DiT's parameters and buffers, all in
host memory when loading to the CPU).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status(field: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_hwm() -> bool:
    try:
        CLEAR_REFS.write_text("5\n")
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    volume_root, manifest_path, strategy, dtype_name, units = argv
    started = time.perf_counter()
    import torch

    # Everything load_pipeline_components imports, imported before the clock and the base RSS.
    import mt_assets.models.audio
    import mt_assets.models.clip_vision
    import mt_assets.models.dit
    import mt_assets.models.dit_loading
    import mt_assets.models.text_encoder
    import mt_assets.models.tokenizers
    import mt_assets.models.vae  # noqa: F401
    from mt_assets.manifest import load_manifest
    from mt_assets.models.pipeline import load_pipeline_components
    from mt_assets.volume import LocalVolume

    manifest = load_manifest(manifest_path)
    volume = LocalVolume(volume_root)
    import_seconds = time.perf_counter() - started
    rss_after_imports = status("VmRSS")
    out: dict[str, object] = {"rss_after_imports": rss_after_imports, "import_seconds": import_seconds}
    rows: dict[str, dict[str, float | int]] = {}
    state = {"rss_before": rss_after_imports}
    out["hwm_reset"] = reset_hwm()

    kept: list[object] = []
    for unit in units.split(","):
        loaded = load_pipeline_components(
            volume,
            manifest,
            dtype=getattr(torch, dtype_name),
            device="cpu",
            only=[unit],
            strategy=strategy,  # type: ignore[arg-type]
        )
        report = loaded.reports[unit]
        held = _tensors(getattr(loaded, unit.replace("-", "_")))
        mapped_started = time.perf_counter()
        mapped = _read_mapped(held, strategy)
        rows[unit] = {
            "seconds": report.seconds + time.perf_counter() - mapped_started,
            "bytes": report.bytes,
            "rss_before": state["rss_before"],
            "peak_rss": status("VmHWM"),
            "files": list(report.files),
            "mapped_bytes": mapped,
        }
        if unit == "transformer":
            out["dit_kept_bytes"] = sum(t.numel() * t.element_size() for t in held)
        kept.append(loaded)  # all units stay loaded, as in a worker
        state["rss_before"] = status("VmRSS")
        reset_hwm()
    out["units"] = rows
    print(json.dumps(out))
    return 0


def _tensors(loaded: object) -> list[Any]:
    """The parameters and buffers a unit holds (a module, or wav2vec2's (feature extractor, model))."""
    import torch

    modules = [
        m for m in (loaded if isinstance(loaded, tuple) else (loaded,)) if isinstance(m, torch.nn.Module)
    ]
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def _read_mapped(tensors: list[Any], strategy: str) -> int:
    """Read the bytes of the tensors still mapped from their files, as a copy to a GPU would; bytes read."""
    import mmap

    import torch

    from mt_assets.models.reading import mapped_file_ranges, warm_tensors

    if strategy != "mmap":
        return warm_tensors(tensors, strategy)  # type: ignore[arg-type]
    ranges = mapped_file_ranges(tensors)
    for t in tensors:  # a page fault per page, with the kernel's readahead: what mmap does
        if t.numel():
            t.detach().reshape(-1).view(torch.uint8)[:: mmap.PAGESIZE].sum()
    return sum(end - begin for spans in ranges.values() for begin, end in spans)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
