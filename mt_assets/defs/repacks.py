"""`repacks/<name>`: the bf16 repacks (mt_assets.models.repack) as assets, each with a blocking check.

    repacks/transformer_bf16   from the wan-dit and multitalk file assets
    repacks/clip_vision_bf16   from the clip file asset

Downstream of their source files' assets, so a source re-materialized with another sha256 (its
data version) shows the repack stale; the code version is a hash of the sources' manifest pins,
so a new revision in the manifest does too. The check `repack_verified` re-reads and re-hashes
the repack's files against its repack.json (and runs on its own, without rewriting anything).

Automation: `eager() & ~missing()`. A repack someone made is rebuilt by the `volume_automation`
sensor when a source file is re-materialized, so it never lags its sources; a repack nobody asked
for is never built (it costs ~51 GB of volume on the real profile), which eager() alone would do
once its sources update.
Metadata keys are repack.json's: files, bytes, sha256s, sources, seconds.
"""

import hashlib
from typing import Any

import dagster as dg

from mt_assets.defs.keys import file_key
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Manifest
from mt_assets.models.repack import (
    REPACKS,
    RepackManifest,
    applicable_repacks,
    expected_sources,
    read_repack,
    source_files,
    verify_repack,
    write_repack,
)

CHECK_NAME = "repack_verified"
GROUP = "repacks"
AUTOMATION = dg.AutomationCondition.eager() & ~dg.AutomationCondition.missing()


def repack_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["repacks", name])


def repack_metadata(repack: RepackManifest) -> dict[str, Any]:
    return {
        "path": dg.MetadataValue.path(repack.folder),
        "files": dg.MetadataValue.json([f.path for f in repack.files]),
        "bytes": repack.bytes,
        "sha256s": dg.MetadataValue.json({f.path: f.sha256 for f in repack.files}),
        "sources": dg.MetadataValue.json({t: s for t, s in repack.sources}),
        "seconds": round(repack.seconds, 3),
    }


def repack_data_version(repack: RepackManifest) -> dg.DataVersion:
    text = "\n".join(f"{f.path}={f.sha256}" for f in repack.files)
    return dg.DataVersion(hashlib.sha256(text.encode()).hexdigest()[:32])


def build_repack_defs(manifest: Manifest) -> list[dg.AssetsDefinition]:
    """Each repack the profile can use (`applicable_repacks`): its asset and its check."""
    defs: list[dg.AssetsDefinition] = []
    for name in applicable_repacks(manifest):
        defs += [build_repack_asset(manifest, name), build_repack_check(name)]
    return defs


def build_repack_asset(manifest: Manifest, name: str) -> dg.AssetsDefinition:
    pins = "\n".join(f"{t}={s}" for t, s in expected_sources(manifest, name))

    @dg.asset(
        key=repack_key(name),
        deps=[file_key(f) for f in source_files(manifest, name)],
        group_name=GROUP,
        code_version=hashlib.sha256(pins.encode()).hexdigest()[:16],
        kinds={"safetensors"},
        automation_condition=AUTOMATION,
        description=(
            f"bf16 copy of {' + '.join(REPACKS[name])} at `repacks/{name}/` for faster cold starts; "
            "the loader uses it for bf16 loads while its recorded sources match the manifest."
        ),
    )
    def _repack(context: dg.AssetExecutionContext, volume: VolumeResource) -> dg.MaterializeResult:
        repack = write_repack(volume.open(), manifest, name)
        context.log.info(
            f"{repack.folder}: {len(repack.files)} files, {repack.bytes} bytes in {repack.seconds:.2f}s"
        )
        return dg.MaterializeResult(
            metadata=repack_metadata(repack), data_version=repack_data_version(repack)
        )

    return _repack


def build_repack_check(name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=repack_key(name),
        name=CHECK_NAME,
        blocking=True,
        description="Re-reads the repack's files: each has the size and sha256 its repack.json records.",
    )
    def _check(volume: VolumeResource) -> dg.AssetCheckResult:
        vol = volume.open()
        repack = read_repack(vol, name)
        if repack is None:
            return dg.AssetCheckResult(
                passed=False, metadata={"problems": f"repacks/{name}/repack.json missing"}
            )
        problems = verify_repack(vol, repack, use_cache=False)
        return dg.AssetCheckResult(
            passed=not problems,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
                "files": dg.MetadataValue.json([f.path for f in repack.files]),
                "bytes": repack.bytes,
            },
        )

    return _check
