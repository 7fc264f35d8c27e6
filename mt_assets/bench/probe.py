"""One cold load in this fresh process; prints one JSON line. Run by mt_assets.bench.cold_start.

    python -m mt_assets.bench.probe VOLUME MANIFEST_YAML STRATEGY DTYPE UNIT[,UNIT...]

Memory is read from /proc/self/status: VmRSS after the imports, then per unit the RSS before it and
the high-water mark VmHWM during it (reset before each unit by writing 5 to /proc/self/clear_refs;
where that is refused the marks are cumulative and `hwm_reset` says so). ru_maxrss would not do:
Linux carries the parent's peak into a child across fork and exec.

Printed (files: what the unit read, relative to the volume: the originals or a repack):
{"rss_after_imports", "import_seconds", "hwm_reset", "units": {unit: {"seconds", "bytes",
"rss_before", "peak_rss", "files"}}, "dit_kept_bytes"} (bytes of the DiT's parameters and buffers, all in
host memory when loading to the CPU).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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

    def on_loaded(report: object) -> None:
        rows[report.unit] = {  # type: ignore[attr-defined]
            "seconds": report.seconds,  # type: ignore[attr-defined]
            "bytes": report.bytes,  # type: ignore[attr-defined]
            "rss_before": state["rss_before"],
            "peak_rss": status("VmHWM"),
            "files": list(report.files),  # type: ignore[attr-defined]
        }
        state["rss_before"] = status("VmRSS")
        reset_hwm()

    loaded = load_pipeline_components(
        volume,
        manifest,
        dtype=getattr(torch, dtype_name),
        device="cpu",
        only=units.split(","),
        on_loaded=on_loaded,
        strategy=strategy,  # type: ignore[arg-type]
    )
    out["units"] = rows
    if loaded.transformer is not None:
        tensors = [*loaded.transformer.parameters(), *loaded.transformer.buffers()]
        out["dit_kept_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
