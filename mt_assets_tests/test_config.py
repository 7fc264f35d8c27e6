"""mt_assets/config.py is the one place MT_* variables are read and the one maker of boto3 S3 clients;
docs/configuration.md lists every variable it declares."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mt_assets import config
from mt_assets.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mt_assets"
DOCS = ROOT / "docs" / "configuration.md"
NAME = re.compile(r"\bMT_[A-Z0-9_]*[A-Z0-9]\b")
BEGIN, END = "<!-- begin: python -m mt_assets.config -->", "<!-- end: python -m mt_assets.config -->"


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_every_mt_name_in_the_code_is_declared_and_documented() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for path in sources("mt_assets", "mt_assets_tests", "benchmarks"):
        if path.name == Path(__file__).name:
            continue
        for name in NAME.findall(path.read_text(encoding="utf-8")):
            if found.get(name, "mt_assets/config.py") == "mt_assets/config.py":
                found[name] = str(path.relative_to(ROOT))
    undeclared = {n: where for n, where in found.items() if n not in config.VARIABLES}
    assert not undeclared, f"MT_* names used but not declared in mt_assets/config.py: {undeclared}"
    undocumented = [n for n in config.VARIABLES if f"`{n}`" not in docs]
    assert not undocumented, f"declared but not in docs/configuration.md: {undocumented}"
    elsewhere = {n for n, where in found.items() if where != "mt_assets/config.py"}
    unused = set(config.VARIABLES) - elsewhere
    assert not unused, f"declared but named nowhere outside mt_assets/config.py: {sorted(unused)}"


def test_the_docs_table_is_the_registry() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    assert BEGIN in docs and END in docs
    table = docs.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == config.reference_markdown().strip(), (
        "docs/configuration.md is out of date: paste `python -m mt_assets.config` between its markers"
    )


def _named_outside_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every string constant that is exactly an MT_* name and is not the key of a write.

    Outside config.py such a constant is a read in the making: `env.get("MT_X")`, `os.environ["MT_X"]`,
    `ENV = "MT_X"` for a later `os.getenv(ENV)`, or a helper called with the name. Writes are allowed:
    a dict literal's key (`{**os.environ, "MT_X": "1"}` for a child process) and an assignment target
    (`env["MT_X"] = "1"`). Messages and docstrings name variables inside longer text, which is fine."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            allowed |= {id(k) for k in node.keys if k is not None}
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
            allowed.add(id(node.slice))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and NAME.fullmatch(node.value)
        and id(node) not in allowed
    ]


def test_no_module_but_config_reads_an_mt_variable() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sources("mt_assets")
        if path != PACKAGE / "config.py"
        for line, name in _named_outside_writes(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert not offenders, "read it through mt_assets.config instead:\n" + "\n".join(offenders)


def test_the_scan_sees_reads_and_lets_writes_be() -> None:
    code = (
        'ENV = "MT_X"\n'
        'a = os.environ.get("MT_A")\n'
        'c = os.environ["MT_C"]\n'
        'd = slots(env, "MT_D")\n'
        'env["MT_W"] = "1"\n'
        'child = {**os.environ, "MT_W2": "1"}\n'
        'raise ValueError("MT_M: expected seconds")\n'
    )
    assert sorted(name for _, name in _named_outside_writes(ast.parse(code))) == [
        "MT_A",
        "MT_C",
        "MT_D",
        "MT_X",
    ]


S3_CLIENT = re.compile(r"boto3\.(client|resource|Session|session\.Session)\(|\.client\(\s*['\"]s3['\"]")


def test_one_module_makes_s3_clients() -> None:
    makers = {
        str(p.relative_to(ROOT)) for p in sources("mt_assets") if S3_CLIENT.search(p.read_text("utf-8"))
    }
    assert makers == {"mt_assets/config.py"}


# -- values ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MT_RENDER_BACKEND", "x", "MT_RENDER_BACKEND: expected one of local, runpod, got 'x'"),
        ("MT_RENDER_DEVICE", "tpu", "MT_RENDER_DEVICE: expected one of cuda, cpu, got 'tpu'"),
        (
            "MT_LOAD_STRATEGY",
            "fast",
            "MT_LOAD_STRATEGY: expected one of mmap, sequential, parallel, got 'fast'",
        ),
        ("MT_RUNPOD_POLL_SECONDS", "soon", "MT_RUNPOD_POLL_SECONDS: expected seconds > 0, got 'soon'"),
        ("MT_RUNPOD_POLL_MAX_SECONDS", "0", "MT_RUNPOD_POLL_MAX_SECONDS: expected seconds > 0, got '0'"),
        (
            "MT_INBOX_CLAIM_LEASE_SECONDS",
            "-5",
            "MT_INBOX_CLAIM_LEASE_SECONDS: expected seconds > 0, got '-5'",
        ),
        (
            "MT_INBOX_CLAIM_LEASE_SECONDS",
            "inf",
            "MT_INBOX_CLAIM_LEASE_SECONDS: expected seconds > 0, got 'inf'",
        ),
        ("MT_GPU_SLOTS", "1.5", "MT_GPU_SLOTS: expected a positive whole number, got '1.5'"),
        ("MT_RUN_LIMIT", "0", "MT_RUN_LIMIT: expected a positive whole number, got '0'"),
        (
            "MT_RUNPOD_API_BASE",
            "api.runpod.ai",
            "MT_RUNPOD_API_BASE: expected an http(s):// URL, got 'api.runpod.ai'",
        ),
        ("MT_OUTPUT_S3", "bucket/x", "MT_OUTPUT_S3: expected s3://bucket[/prefix], got 'bucket/x'"),
        (
            "MT_COMPUTE_LOGS_S3",
            "s3://Bad_Bucket/x",
            "MT_COMPUTE_LOGS_S3: expected s3://bucket[/prefix], got 's3://Bad_Bucket/x' (bucket name 'Bad_Bucket'",
        ),
    ],
)
def test_a_bad_value_names_the_variable_what_it_takes_and_what_it_got(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        config.get(name, {name: value})
    shown = str(raised.value)
    assert shown == message or (shown.startswith(message) and "bucket name" in message)
    assert isinstance(raised.value, ValueError)


def test_a_bad_value_never_shows_credentials() -> None:
    with pytest.raises(ConfigError) as raised:
        config.OUTPUT_S3.read({"MT_OUTPUT_S3": "s3://user:s3cret@bucket/x"})
    assert "s3cret" not in str(raised.value) and "'s3://***@bucket/x'" in str(raised.value)


def test_unset_or_blank_gives_the_default_and_values_are_parsed() -> None:
    assert config.LOAD_STRATEGY.read({}) == "parallel"
    assert config.LOAD_STRATEGY.read({"MT_LOAD_STRATEGY": "  "}) == "parallel"
    assert config.LOAD_STRATEGY.read({"MT_LOAD_STRATEGY": " MMAP "}) == "mmap"
    assert config.INBOX_CLAIM_LEASE_SECONDS.read({}) == 900.0
    assert config.INBOX_CLAIM_LEASE_SECONDS.read({"MT_INBOX_CLAIM_LEASE_SECONDS": "60"}) == 60.0
    assert config.RUNPOD_SLOTS.read({}) is None and config.RUNPOD_SLOTS.read({"MT_RUNPOD_SLOTS": "8"}) == 8
    assert config.VOLUME.read_or("/runpod-volume", {}) == "/runpod-volume"
    assert config.VOLUME.read_or("/runpod-volume", {"MT_VOLUME": "/workspace"}) == "/workspace"
    with pytest.raises(KeyError, match="MT_NOPE: not a declared variable"):
        config.get("MT_NOPE", {})


def test_settings_come_from_the_given_mapping() -> None:
    assert Settings.from_env({}) == Settings("var/volume", "tiny", "hub", "local")
    env = {
        "MT_VOLUME": "/v",
        "MT_PROFILE": "multitalk-480p",
        "MT_SOURCE": "s3://b/p",
        "MT_RENDER_BACKEND": "runpod",
    }
    assert Settings.from_env(env) == Settings("/v", "multitalk-480p", "s3://b/p", "runpod")


def test_the_modules_choices_are_the_registrys() -> None:
    from mt_assets.models.reading import DEFAULT_STRATEGY, STRATEGIES

    assert config.LOAD_STRATEGY.choices == STRATEGIES and config.LOAD_STRATEGY.default == DEFAULT_STRATEGY


def test_the_s3_client_takes_endpoint_and_region_from_the_environment_or_the_caller() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-ro-1"}
    made = config.s3_client(env=env)
    try:
        assert (made.endpoint, made.region) == ("http://127.0.0.1:9", "eu-ro-1")
        assert made.client.meta.endpoint_url == "http://127.0.0.1:9"
        assert made.client.meta.config.s3["addressing_style"] == "path"
        assert "session" not in repr(made)
    finally:
        made.client.close()
    env["AWS_ENDPOINT_URL_S3"] = "http://127.0.0.1:10"  # the S3-specific one wins
    assert config.s3_endpoint(env) == "http://127.0.0.1:10"
    made = config.s3_client(
        endpoint_url="http://127.0.0.1:11", region="us-west-2", max_pool_connections=24, env={}
    )
    try:
        assert (made.endpoint, made.region, made.client.meta.config.max_pool_connections) == (
            "http://127.0.0.1:11",
            "us-west-2",
            24,
        )
    finally:
        made.client.close()
    assert config.s3_region({}) == "us-east-1" and config.s3_endpoint({}) is None


def test_a_volume_client_has_its_own_endpoint_region_and_keys() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # the source's: the volume's own wins
        "AWS_REGION": "us-east-1",
        "MT_VOLUME_S3_ENDPOINT": "http://127.0.0.1:12",
        "MT_VOLUME_S3_REGION": "EU-RO-1",
        "MT_VOLUME_S3_ACCESS_KEY_ID": "user_volume",
        "MT_VOLUME_S3_SECRET_ACCESS_KEY": "rps_volume-secret",
    }
    made = config.volume_s3_client(env)
    try:
        assert (made.endpoint, made.region) == ("http://127.0.0.1:12", "EU-RO-1")
        creds = made.session.get_credentials()
        assert (creds.access_key, creds.secret_key) == ("user_volume", "rps_volume-secret")
        assert "rps_volume-secret" not in repr(made)
    finally:
        made.client.close()
    fallback = config.volume_s3_client({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "x-1"})
    try:
        assert (fallback.endpoint, fallback.region) == ("http://127.0.0.1:9", "x-1")
    finally:
        fallback.client.close()
    with pytest.raises(config.VolumeKeysError, match="MT_VOLUME_S3_SECRET_ACCESS_KEY") as caught:
        config.volume_s3_client({"MT_VOLUME_S3_ACCESS_KEY_ID": "user_volume"})
    assert "user_volume" not in str(caught.value)
    with pytest.raises(config.ConfigError, match="MT_VOLUME_S3_ENDPOINT: expected an http"):
        config.volume_s3_client({"MT_VOLUME_S3_ENDPOINT": "s3api-eu-ro-1.runpod.io"})


def test_persistent_params_take_a_whole_number_zero_included() -> None:
    assert config.PERSISTENT_PARAMS.read({}) is None
    assert config.PERSISTENT_PARAMS.read({"MT_PERSISTENT_PARAMS": "0"}) == 0
    assert config.PERSISTENT_PARAMS.read({"MT_PERSISTENT_PARAMS": "7000000000"}) == 7_000_000_000
    for bad in ("-1", "1e9", "7.5", "²"):
        with pytest.raises(config.ConfigError, match="MT_PERSISTENT_PARAMS: expected a whole number"):
            config.PERSISTENT_PARAMS.read({"MT_PERSISTENT_PARAMS": bad})
