"""One asset per manifest file, provisioned in one step; one blocking check per file.

The multi-asset maps `provision.plan/apply` (core) onto the selected files; its metadata keys
are the CLI's JSON keys. The stat fields (`size`, `mtime_ns`, `inode`) it records are what the
drift sensor compares against.
"""

import os
from typing import Any

import dagster as dg

from mt_assets import provision
from mt_assets.audit import FileAudit, audit
from mt_assets.defs.keys import CHECK_NAME, file_code_version, file_key, group_for
from mt_assets.defs.resources import SourceResource, VolumeResource
from mt_assets.manifest import Manifest, ManifestFile
from mt_assets.units import human_bytes
from mt_assets.volume import LocalVolume


class _LogProgress:
    """Progress for Dagster's run log: one line per file started and finished."""

    def __init__(self, log: dg.DagsterLogManager) -> None:
        self.log = log

    def start(self, key: str, label: str, total: int | None) -> None:
        self.log.info(f"fetching {label} ({human_bytes(total)})")

    def advance(self, key: str, n: int) -> None:
        pass

    def finish(self, key: str) -> None:
        self.log.info(f"done with {key}")


def file_spec(f: ManifestFile) -> dg.AssetSpec:
    size = human_bytes(f.size) if f.size is not None else f"~{human_bytes(f.estimated_size)} (not locked)"
    return dg.AssetSpec(
        key=file_key(f),
        group_name=group_for(f.component),
        code_version=file_code_version(f),
        kinds={f.kind},
        description=f"`{f.path}` from {f.repo} at {f.revision} ({size}, {f.kind}); on the volume at `{f.target}`.",
        metadata={
            "repo": f.repo,
            "revision": f.revision,
            "path": f.path,
            "target": f.target,
            "kind": f.kind,
            "expected_size": f.size if f.size is not None else "unpinned",
            "expected_sha256": f.sha256 or f.git_sha1 or "unpinned",
        },
    )


def stat_metadata(volume: LocalVolume, f: ManifestFile) -> dict[str, Any]:
    st = os.stat(volume.path(f.target))
    # mtime_ns, ctime_ns and inode exceed what GraphQL integers carry: kept as text.
    return {
        "size": st.st_size,
        "mtime_ns": str(st.st_mtime_ns),
        "ctime_ns": str(st.st_ctime_ns),
        "inode": str(st.st_ino),
    }


def build_model_files_asset(manifest: Manifest) -> dg.AssetsDefinition:
    files_by_key = {file_key(f): f for f in manifest.files}

    @dg.multi_asset(
        name="model_files",
        specs=[file_spec(f) for f in manifest.files],
        can_subset=True,
        description="Provision the selected model files onto the volume: fetch what is missing or wrong, verify.",
    )
    def model_files(context: dg.AssetExecutionContext, volume: VolumeResource, source: SourceResource):
        selected = [f for key, f in files_by_key.items() if key in context.selected_asset_keys]
        vol = volume.open()
        the_plan = provision.plan(manifest.only({f.target for f in selected}), vol)
        context.log.info(
            f"{len(the_plan.to_fetch)} of {len(selected)} files to fetch ({human_bytes(the_plan.to_fetch_bytes)}); "
            f"{human_bytes(the_plan.free_bytes)} free on {vol.uri}"
        )
        the_plan.check_space()
        results: dict[str, provision.FetchResult] = {}
        if the_plan.to_fetch:
            src = source.open()
            try:
                report = provision.apply(the_plan, src, vol, progress=_LogProgress(context.log))
            finally:
                src.close()
            results = {r.file.target: r for r in report.results}
            source_uri = src.uri
        else:
            source_uri = source.spec
        audited = {fa.file.target: fa for fa in the_plan.audit.files}
        failed: list[str] = []
        for f in selected:
            result = results.get(f.target)
            if result is not None and result.outcome == "failed":
                failed.append(result.detail or f.target)
                continue
            yield dg.MaterializeResult(
                asset_key=file_key(f),
                metadata=_metadata(vol, f, result, audited[f.target], source_uri),
                data_version=dg.DataVersion(
                    result.sha256 if result and result.sha256 else audited[f.target].sha256 or "unknown"
                ),
            )
        if failed:
            raise dg.Failure(
                description=f"{len(failed)} of {len(selected)} files were not placed",
                metadata={"errors": dg.MetadataValue.md("\n".join(f"- {e}" for e in failed))},
            )

    return model_files


def _metadata(
    vol: LocalVolume,
    f: ManifestFile,
    result: provision.FetchResult | None,
    before: FileAudit,
    source_uri: str,
) -> dict[str, Any]:
    common = {
        "volume_path": dg.MetadataValue.path(str(vol.path(f.target))),
        "source": result.source_uri if result else f"{source_uri} ({f.repo}@{f.revision})",
        **stat_metadata(vol, f),
    }
    if result is None:
        return {
            **common,
            "outcome": "skipped",
            "status": before.status,
            "sha256": before.sha256 or "",
            "bytes": 0,
            "seconds": 0.0,
            "mb_per_s": 0.0,
            "detail": "already on the volume and verified: no transfer"
            if before.status == "ok"
            else "already on the volume, unpinned (nothing to verify against): no transfer",
        }
    return {
        **common,
        "outcome": result.outcome,
        "status": result.status,
        "sha256": result.sha256 or "",
        "bytes": result.bytes,
        "seconds": round(result.seconds, 3),
        "mb_per_s": round(result.mb_per_s, 1),
        "detail": result.detail or "",
    }


def build_file_checks(manifest: Manifest) -> dg.AssetChecksDefinition:
    files_by_check = {dg.AssetCheckKey(file_key(f), CHECK_NAME): f for f in manifest.files}

    @dg.multi_asset_check(
        name="model_file_checks",
        specs=[
            dg.AssetCheckSpec(
                CHECK_NAME,
                asset=file_key(f),
                blocking=True,
                description="The bytes on the volume match the pinned sha256 (hash cache unless `full`).",
            )
            for f in manifest.files
        ],
        can_subset=True,
        config_schema={
            "full": dg.Field(
                bool, default_value=False, description="Re-read and re-hash every file (nightly pass)."
            ),
        },
    )
    def model_file_checks(context: dg.AssetCheckExecutionContext, volume: VolumeResource):
        selected = [f for key, f in files_by_check.items() if key in context.selected_asset_check_keys]
        full = bool(context.op_execution_context.op_config["full"])
        report = audit(manifest.only({f.target for f in selected}), volume.open(), full=full)
        for fa in report.files:
            yield dg.AssetCheckResult(
                asset_key=file_key(fa.file),
                check_name=CHECK_NAME,
                passed=fa.status == "ok",
                # An unpinned file is not wrong, only unproven: warn without blocking.
                severity=dg.AssetCheckSeverity.WARN
                if fa.status == "unpinned"
                else dg.AssetCheckSeverity.ERROR,
                metadata={
                    "status": fa.status,
                    "sha256": fa.sha256 or "",
                    "expected_sha256": fa.file.sha256 or fa.file.git_sha1 or "unpinned",
                    "detail": fa.detail or "",
                    "full": full,
                    "bytes_read": fa.size if fa.hashed and fa.size else 0,
                },
            )

    return model_file_checks
