"""One asset per bundle: load it from the volume with transformers, offline, and record what loaded.

Bundles rebuild by themselves when a file under them is re-materialized (eager), and are built
the first time their files exist (on_missing), through the automation sensor.
"""

import dagster as dg

from mt_assets.bundles import load_bundle
from mt_assets.defs.keys import bundle_code_version, bundle_key, file_key
from mt_assets.defs.resources import VolumeResource
from mt_assets.manifest import Bundle, Manifest

AUTOMATION = dg.AutomationCondition.eager() | dg.AutomationCondition.on_missing()


def build_bundle_asset(bundle: Bundle) -> dg.AssetsDefinition:
    @dg.asset(
        key=bundle_key(bundle),
        name=None,
        deps=[file_key(f) for f in bundle.files],
        group_name="bundles",
        code_version=bundle_code_version(bundle),
        automation_condition=AUTOMATION,
        kinds={"transformers"},
        description=f"{bundle.loader} `{bundle.location}` ({len(bundle.files)} files), loaded offline from the volume.",
    )
    def _bundle(context: dg.AssetExecutionContext, volume: VolumeResource) -> dg.MaterializeResult:
        loaded = load_bundle(bundle, volume.open())
        context.log.info(f"{bundle.name}: {loaded.loaded.get('class')} loaded in {loaded.seconds:.2f}s")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(loaded.path),
                "files": dg.MetadataValue.json(loaded.files),
                "seconds": round(loaded.seconds, 3),
                **{k: v for k, v in loaded.loaded.items() if v is not None},
            }
        )

    return _bundle


def build_bundle_assets(manifest: Manifest) -> list[dg.AssetsDefinition]:
    return [build_bundle_asset(b) for b in manifest.bundles]
