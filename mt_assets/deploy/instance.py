"""The production Dagster instance: the shipped deploy/dagster.yaml, completed from the environment.

    DAGSTER_PG_URL      postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB (required). The file says
                        `postgres_url: {env: DAGSTER_PG_URL}`: every process reads it from its own
                        environment, so the password is never written to a file.
    MT_COMPUTE_LOGS_S3  s3://BUCKET/PREFIX: each step's stdout/stderr go to S3 (dagster-aws's
                        S3ComputeLogManager, staged under $DAGSTER_HOME/compute-logs, uploaded every
                        30 s and at the end), so a webserver on another machine shows them.
                        Endpoint and region as config.s3_client finds them (AWS_ENDPOINT_URL_S3 /
                        AWS_ENDPOINT_URL, AWS_REGION), written into the file; credentials as boto3
                        reads them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never written.
                        Unset: local files under $DAGSTER_HOME/storage, readable only on this machine.
    MT_RUN_LIMIT        runs in progress at once (default 4); more wait in the queue

dagster.yaml cannot be conditional, so the compute log manager is chosen here. `overlay` (a mapping,
deep-merged last) is for settings a site or a test changes: shorter monitoring intervals, say.

No Dagster import: this is read by `python -m mt_assets.deploy` before any Dagster process starts.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from mt_assets import config

T = TypeVar("T")

SHIPPED = "dagster.yaml"
PG_URL_VAR = "DAGSTER_PG_URL"
PG_SCHEME = "postgresql+psycopg2"
DEFAULT_S3_PREFIX = "dagster-compute-logs"
S3_UPLOAD_INTERVAL_SECONDS = 30


class InstanceConfigError(ValueError):
    """The environment cannot make a production instance; the message names the variable."""


@dataclass(frozen=True)
class PostgresTarget:
    """Where DAGSTER_PG_URL points, without its password (safe to print)."""

    user: str
    host: str
    port: int
    database: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


def shipped_config() -> dict[str, Any]:
    """deploy/dagster.yaml as shipped."""
    text = resources.files(__package__).joinpath(SHIPPED).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def postgres_target(env: Mapping[str, str]) -> PostgresTarget:
    """Check DAGSTER_PG_URL and say where it points; InstanceConfigError naming what is wrong."""
    url = env.get(PG_URL_VAR, "")
    if not url:
        raise InstanceConfigError(
            f"{PG_URL_VAR} is not set: the production instance stores runs and events in Postgres "
            f"({PG_SCHEME}://USER:PASSWORD@HOST:5432/DB)"
        )
    parts = urlsplit(url)
    if parts.scheme != PG_SCHEME:
        raise InstanceConfigError(
            f"{PG_URL_VAR}: scheme {parts.scheme or '(none)'!r}, expected {PG_SCHEME!r} "
            f"(SQLAlchemy's default driver for postgresql:// is psycopg 3, which dagster-postgres "
            f"does not support): {PG_SCHEME}://USER:PASSWORD@HOST:5432/DB"
        )
    database = parts.path.lstrip("/")
    if not parts.hostname or not database:
        raise InstanceConfigError(f"{PG_URL_VAR}: needs a host and a database: {PG_SCHEME}://USER@HOST/DB")
    return PostgresTarget(parts.username or "", parts.hostname, parts.port or 5432, database)


def compute_logs(env: Mapping[str, str], home: Path) -> dict[str, Any] | None:
    """The S3 compute log manager for MT_COMPUTE_LOGS_S3, or None (Dagster's local default).

    dagster-aws makes its own boto3 client: the endpoint and region given to it are config.s3_client's."""
    uri = _read(config.COMPUTE_LOGS_S3, env)
    if not uri:
        return None
    parts = urlsplit(uri)
    endpoint = config.s3_endpoint(env)
    if endpoint and "@" in urlsplit(endpoint).netloc:
        raise InstanceConfigError(
            "MT_COMPUTE_LOGS_S3: the S3 endpoint URL must not carry credentials (it is written to "
            "dagster.yaml); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    return {
        "module": "dagster_aws.s3.compute_log_manager",
        "class": "S3ComputeLogManager",
        "config": {
            "bucket": parts.netloc,
            "prefix": parts.path.strip("/") or DEFAULT_S3_PREFIX,
            "local_dir": str(Path(home) / "compute-logs"),
            "upload_interval": S3_UPLOAD_INTERVAL_SECONDS,
            **({"endpoint_url": endpoint} if endpoint else {}),
            "region": config.s3_region(env),
        },
    }


def _read(variable: config.Variable[T], env: Mapping[str, str]) -> T:
    try:
        return variable.read(env)
    except config.ConfigError as e:
        raise InstanceConfigError(str(e)) from None


def instance_config(
    env: Mapping[str, str], home: Path, overlay: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The production dagster.yaml as a mapping: shipped, then the environment, then `overlay`."""
    postgres_target(env)
    shipped = shipped_config()
    logs = compute_logs(env, home)
    if logs is not None:
        shipped["compute_logs"] = logs
    limit = _read(config.RUN_LIMIT, env)
    if limit is not None:
        shipped["concurrency"]["runs"]["max_concurrent_runs"] = limit
    return merge(shipped, overlay or {})


def write_instance(
    home: Path, env: Mapping[str, str] | None = None, overlay: Mapping[str, Any] | None = None
) -> Path:
    """Write $DAGSTER_HOME/dagster.yaml for the production instance; returns its path."""
    home = Path(home)
    document = instance_config(os.environ if env is None else env, home, overlay)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    header = (
        "# Written by `python -m mt_assets.deploy` from mt_assets/deploy/dagster.yaml and the environment;\n"
        "# rewritten at every start: change the shipped file, the environment or the overlay instead.\n"
    )
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(header + yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    os.replace(temp, path)
    return path


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` deep-merged onto a copy of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
