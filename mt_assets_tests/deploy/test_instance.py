"""The two instance configurations shipped with the project: the embedded default (SQLite, `make demo`
and `make ui`) and the production one (Postgres from DAGSTER_PG_URL, the run queue, pools, run
monitoring and retries, compute logs local or on S3), each loaded by Dagster itself."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mt_assets.deploy.instance import (
    InstanceConfigError,
    compute_logs,
    instance_config,
    postgres_target,
    shipped_config,
    write_instance,
)
from mt_assets.deploy.serve import ServeError, pool_limits
from mt_assets_tests.dagster_dev import REPO_ROOT

PG = "postgresql+psycopg2://dagster:s3cret@db.internal:5433/dagster"


def load(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def test_one_dagster_release_for_core_webserver_and_libraries() -> None:
    core = importlib.metadata.version("dagster")
    library = "0.{}.{}".format(16 + int(core.split(".")[1]), core.split(".")[2])  # 1.13.27 -> 0.29.27
    for name in ("dagster-webserver", "dagster-graphql", "dagster-pipes", "dagster-shared"):
        assert importlib.metadata.version(name) == core, name
    for name in ("dagster-postgres", "dagster-aws"):
        assert importlib.metadata.version(name) == library, name


def test_the_shipped_production_file_reads_the_postgres_url_from_the_environment_only() -> None:
    config = shipped_config()
    assert config["storage"] == {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}}
    text = (REPO_ROOT / "mt_assets" / "deploy" / "dagster.yaml").read_text()
    assert "postgresql+psycopg2://" in text  # documented in a comment ...
    assert "@" not in "".join(line.split("#")[0] for line in text.splitlines())  # ... never as a value
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"] == {"default_limit": 1, "granularity": "run"}
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_retries"] == {"enabled": True, "max_retries": 1, "retry_on_asset_or_op_failure": False}
    assert "compute_logs" not in config  # local unless MT_COMPUTE_LOGS_S3 says otherwise


def test_the_production_instance_loads_on_postgres_with_its_queue_pools_and_local_compute_logs(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", database)
    path = write_instance(tmp_path, {"DAGSTER_PG_URL": database, "MT_RUN_LIMIT": "3"})
    assert database not in path.read_text()
    with load(tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3
        assert instance.get_concurrency_config().pool_config.pool_granularity.value == "run"
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.global_op_concurrency_default_limit == 1


def test_compute_logs_go_to_s3_when_a_bucket_is_configured(
    database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"DAGSTER_PG_URL": database, "MT_COMPUTE_LOGS_S3": "s3://logs-bucket/team/dagster/"}
    assert compute_logs(env, tmp_path) == {
        "module": "dagster_aws.s3.compute_log_manager",
        "class": "S3ComputeLogManager",
        "config": {
            "bucket": "logs-bucket",
            "prefix": "team/dagster",
            "local_dir": str(tmp_path / "compute-logs"),
            "upload_interval": 30,
            "region": "us-east-1",
        },
    }
    # Endpoint and region as config.s3_client finds them (dagster-aws makes its own client).
    on_runpod = {**env, "AWS_ENDPOINT_URL_S3": "https://s3api-eu-ro-1.runpod.io", "AWS_REGION": "eu-ro-1"}
    assert compute_logs(on_runpod, tmp_path)["config"] | {"local_dir": ""} == {  # type: ignore[index]
        "bucket": "logs-bucket",
        "prefix": "team/dagster",
        "local_dir": "",
        "upload_interval": 30,
        "endpoint_url": "https://s3api-eu-ro-1.runpod.io",
        "region": "eu-ro-1",
    }
    with pytest.raises(InstanceConfigError, match="must not carry credentials"):
        compute_logs({**env, "AWS_ENDPOINT_URL": "https://user:secret@s3.example"}, tmp_path)
    for name, value in {
        **env,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    write_instance(tmp_path, env)
    with load(tmp_path) as instance:
        assert type(instance.compute_log_manager).__name__ == "S3ComputeLogManager"
    with pytest.raises(
        InstanceConfigError, match=r"MT_COMPUTE_LOGS_S3: expected s3://bucket\[/prefix\], got 'logs-bucket'"
    ):
        compute_logs({"MT_COMPUTE_LOGS_S3": "logs-bucket"}, tmp_path)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "DAGSTER_PG_URL is not set"),
        ("postgresql://u@h/db", "scheme 'postgresql', expected 'postgresql+psycopg2'"),
        ("sqlite:///x.db", "scheme 'sqlite'"),
        ("postgresql+psycopg2://u@h", "needs a host and a database"),
    ],
)
def test_a_bad_postgres_url_is_refused_naming_the_variable(url: str, message: str) -> None:
    with pytest.raises(InstanceConfigError, match=re.escape(message)):
        postgres_target({"DAGSTER_PG_URL": url})


def test_where_the_url_points_is_said_without_its_password() -> None:
    assert str(postgres_target({"DAGSTER_PG_URL": PG})) == "dagster@db.internal:5433/dagster"


def test_an_overlay_changes_only_what_it_names(tmp_path: Path) -> None:
    config = instance_config(
        {"DAGSTER_PG_URL": PG}, tmp_path, {"run_monitoring": {"poll_interval_seconds": 2}}
    )
    assert config["run_monitoring"]["poll_interval_seconds"] == 2
    assert (
        config["run_monitoring"]["max_runtime_seconds"]
        == shipped_config()["run_monitoring"]["max_runtime_seconds"]
    )
    with pytest.raises(InstanceConfigError, match="MT_RUN_LIMIT: expected a positive whole number, got '0'"):
        instance_config({"DAGSTER_PG_URL": PG, "MT_RUN_LIMIT": "0"}, tmp_path)


def test_pool_limits_gpu_one_by_default_runpod_only_when_set() -> None:
    assert pool_limits({}) == {"gpu": 1}
    assert pool_limits({"MT_GPU_SLOTS": "2", "MT_RUNPOD_SLOTS": "8"}) == {"gpu": 2, "runpod": 8}
    with pytest.raises(ServeError, match="MT_GPU_SLOTS: expected a positive whole number, got 'two'"):
        pool_limits({"MT_GPU_SLOTS": "two"})


def test_the_embedded_default_is_still_sqlite_under_dagster_home(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    assert "storage" not in yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    with load(tmp_path) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.compute_log_manager).__name__ == "LocalComputeLogManager"
