"""Configuration from the environment: every MT_* variable, declared once, with a default that works
on a laptop; and the one factory of boto3 S3 clients.

Nothing else in mt_assets reads an MT_* variable (mt_assets_tests/test_config.py checks it): a caller
asks the variable declared here, and gets the parsed value or the default

    config.LOAD_STRATEGY.read()            "parallel" unless MT_LOAD_STRATEGY says otherwise
    config.RUNPOD_POLL_SECONDS.read(env)   a float > 0; `env` is a mapping read instead of os.environ
    Settings.from_env(env)                 the four the CLI and Dagster start from

An unset or blank variable means its default. A bad value raises ConfigError (a ValueError) naming
the variable, what it takes and what it got:

    MT_RENDER_BACKEND: expected one of local, runpod, got 'x'

Writing a variable (into a child process's environment, say) is not reading it and may happen
anywhere. docs/configuration.md lists every variable (its table is `python -m mt_assets.config`'s
output, and a test keeps the two the same).

Secrets (HF_TOKEN, AWS keys, RUNPOD_API_KEY) are read where they are used, by the libraries that
use them, and never copied into settings, logs or metadata. `s3_client` reads only where S3 is
(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION) and leaves credentials to boto3's own chain;
`volume_s3_client` is the one reader of MT_VOLUME_S3_SECRET_ACCESS_KEY, handed straight to boto3.

No import of torch, dagster or boto3 here: the worker reads its settings before anything heavy loads.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
U = TypeVar("U")
Env = Mapping[str, str]


class ConfigError(ValueError):
    """A variable's value cannot be used; the message names the variable, what it takes and what it got."""


# -- parsers: text -> value, or ValueError(detail) ---------------------------------------------------


def _text(value: str) -> str:
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError from None  # the message says what was expected; float's own adds nothing
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError
    return seconds


def _count(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise ValueError
    return int(value)


def _whole(value: str) -> int:
    if not value.isdigit():  # ASCII digits only: no sign, no "1e9", no "½"
        raise ValueError
    return int(value)


def _s3_uri(value: str) -> str:
    from mt_assets.sources.base import SourceError
    from mt_assets.sources.s3 import parse_s3_uri

    try:
        parse_s3_uri(value)
    except SourceError as e:
        detail = str(e).split(": ", 1)[-1]  # without "source <uri>: "
        raise ValueError("" if detail.startswith("expected") else detail) from None
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError
    return value


# -- the registry ------------------------------------------------------------------------------------

GROUPS = {
    "volume": "Volume and models",
    "render": "Rendering",
    "jobs": "Render jobs: limits on what a job file may ask",
    "runpod": "RunPod",
    "control": "Control plane (`python -m mt_assets.deploy`)",
    "tests": "Tests and benchmarks",
}


@dataclass(frozen=True)
class Variable(Generic[T]):
    """One MT_* variable: what it is called, what it means, what it takes, and what it is when unset."""

    name: str
    group: str  # a key of GROUPS
    default: T
    meaning: str
    expected: str  # what a value must be, as errors and the docs say it
    parse: Callable[[str], T] = field(repr=False)
    choices: tuple[str, ...] = ()
    shown_default: str | None = None  # the docs' default where `default` (often None) needs words

    def read(self, env: Env | None = None) -> T:
        """The value in `env` (None: os.environ), parsed; the default when unset or blank."""
        return self.read_or(self.default, env)

    def read_or(self, default: U, env: Env | None = None) -> T | U:
        """As read(), with the caller's own default (the worker's volume is /runpod-volume, say)."""
        text = (os.environ if env is None else env).get(self.name, "").strip()
        if not text:
            return default
        try:
            return self.parse(text)
        except ValueError as e:
            detail = f" ({e})" if str(e) else ""
            shown = re.sub(r"^(\w+://)[^/]*@", r"\1***@", text)  # never a user:secret@ in a message
            raise ConfigError(f"{self.name}: expected {self.expected}, got {shown!r}{detail}") from None

    @property
    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        return "unset" if self.default is None else f"`{self.default}`"


VARIABLES: dict[str, Variable[Any]] = {}


def _declare(var: Variable[T]) -> Variable[T]:
    if var.group not in GROUPS or var.name in VARIABLES or not var.name.startswith("MT_"):
        raise AssertionError(f"config: {var.name}: a duplicate, or an unknown group {var.group!r}")
    VARIABLES[var.name] = var
    return var


def _choice(
    name: str, group: str, default: str | None, choices: tuple[str, ...], meaning: str, **kw: Any
) -> Variable[Any]:
    def parse(value: str) -> str:
        if value.lower() not in choices:
            raise ValueError
        return value.lower()

    return _declare(
        Variable(name, group, default, meaning, f"one of {', '.join(choices)}", parse, choices, **kw)
    )


def _variable(
    name: str, group: str, default: T, meaning: str, expected: str, parse: Callable[[str], T], **kw: Any
) -> Variable[T]:
    return _declare(Variable(name, group, default, meaning, expected, parse, **kw))


# Volume and models
VOLUME: Variable[str] = _variable(
    "MT_VOLUME", "volume", "var/volume",
    "The volume: a folder, or `s3://<bucket>[/<prefix>]` reached through an S3-compatible API "
    "(RunPod: bucket = the network volume's id; MT_VOLUME_S3_*), for audit and provision only. The "
    "worker's default is /runpod-volume, where RunPod mounts it on serverless.",
    "a folder or s3://bucket[/prefix]", _text, shown_default="`var/volume` (worker: `/runpod-volume`)",
)  # fmt: skip
VOLUME_S3_ENDPOINT: Variable[str | None] = _variable(
    "MT_VOLUME_S3_ENDPOINT", "volume", None,
    "The S3-compatible endpoint of an `s3://` volume (RunPod: `https://s3api-<datacenter>.runpod.io`). "
    "Unset: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, as for an `s3://` source.",
    "an http(s) URL", _http_url, shown_default="unset (the `AWS_*` endpoint)",
)  # fmt: skip
VOLUME_S3_REGION: Variable[str | None] = _variable(
    "MT_VOLUME_S3_REGION", "volume", None,
    "The region of an `s3://` volume (RunPod: the datacenter id, e.g. `EU-RO-1`). Unset: AWS_REGION.",
    "a region name", _text, shown_default="unset (`AWS_REGION`)",
)  # fmt: skip
VOLUME_S3_ACCESS_KEY_ID: Variable[str | None] = _variable(
    "MT_VOLUME_S3_ACCESS_KEY_ID", "volume", None,
    "The access key of an `s3://` volume (RunPod: an S3 API key's user id), with "
    "MT_VOLUME_S3_SECRET_ACCESS_KEY. Unset: boto3's chain (AWS_ACCESS_KEY_ID, a profile). Never logged.",
    "a key id", _text, shown_default="unset (boto3's chain)",
)  # fmt: skip
VOLUME_S3_SECRET_ACCESS_KEY: Variable[str | None] = _variable(
    "MT_VOLUME_S3_SECRET_ACCESS_KEY", "volume", None,
    "The secret of an `s3://` volume's key, with MT_VOLUME_S3_ACCESS_KEY_ID. A secret: read only by "
    "`config.volume_s3_client`, handed to boto3, never copied into settings, logs or metadata.",
    "a secret", _text, shown_default="unset (boto3's chain)",
)  # fmt: skip
PROFILE: Variable[str] = _variable(
    "MT_PROFILE", "volume", "tiny",
    "A shipped manifest profile: `tiny` (random weights, CPU-sized) or `multitalk-480p` (the real one).",
    "a profile name", _text,
)  # fmt: skip
MANIFEST: Variable[str | None] = _variable(
    "MT_MANIFEST", "volume", None,
    "A manifest YAML file, used instead of MT_PROFILE (the worker refuses both at once).",
    "a file path", _text,
)  # fmt: skip
SOURCE: Variable[str] = _variable(
    "MT_SOURCE", "volume", "hub",
    "Where missing files are fetched from: `hub` (Hugging Face), `s3://bucket/prefix`, or a mirror folder.",
    "hub, s3://bucket/prefix or a folder", _text,
)  # fmt: skip
LOAD_STRATEGY: Variable[str] = _choice(
    "MT_LOAD_STRATEGY", "volume", "parallel", ("mmap", "sequential", "parallel"),
    "How checkpoint files are read (mt_assets/models/reading.py): `parallel` ranges on 4 threads, "
    "`sequential` large reads, `mmap` as safetensors does.",
)  # fmt: skip
DIRECT_WRITES: Variable[str] = _choice(
    "MT_DIRECT_WRITES", "volume", "auto", ("auto", "on", "off"),
    "O_DIRECT for staged writes (mt_assets/volume/direct.py): `auto` on local block filesystems "
    "(ext4, xfs, btrfs, f2fs) only, `on` wherever the filesystem allows it, `off` never.",
)  # fmt: skip
OFFLINE_ISOLATION: Variable[str] = _choice(
    "MT_OFFLINE_ISOLATION", "volume", "auto", ("auto", "netns", "network-namespace", "audit-hooks"),
    "How `verify-offline` cuts the network (mt_assets/offline/isolation.py): `auto` a network "
    "namespace where the kernel allows one, else the audit hook; `netns` the namespace or an error; "
    "`audit-hooks` the hook alone. `--isolation` and the asset's config win over it.",
)  # fmt: skip

# Rendering
RENDER_BACKEND: Variable[str] = _choice(
    "MT_RENDER_BACKEND", "render", "local", ("local", "runpod"),
    "Where Dagster's renders run: `local` in the run, pool `gpu`; `runpod` on the RunPod endpoint "
    "(MT_RUNPOD_*), pool `runpod`.",
)  # fmt: skip
RENDER_DEVICE: Variable[str | None] = _choice(
    "MT_RENDER_DEVICE", "render", None, ("cuda", "cpu"),
    "The torch device renders use. Unset: Dagster's local renders use `cpu`; the worker uses `cuda` "
    "when torch sees one, else `cpu`.",
    shown_default="unset (Dagster: `cpu`; worker: `cuda` if available)",
)  # fmt: skip
PERSISTENT_PARAMS: Variable[int | None] = _variable(
    "MT_PERSISTENT_PARAMS", "render", None,
    "Low VRAM (the reference's `--num_persistent_param_in_dit`): at most this many DiT parameters stay "
    "on the render device; the others stay on the host and move to the device per layer while it "
    "runs. `0` keeps none resident. Unset: the whole DiT on the device.",
    "a whole number >= 0", _whole,
    shown_default="unset (all resident)",
)  # fmt: skip
OUTPUT_S3: Variable[str | None] = _variable(
    "MT_OUTPUT_S3", "render", None,
    "s3://bucket/prefix for rendered videos: the worker uploads there (`return_video: s3`, its default "
    "when set) and Dagster's RunPod renders ask for it. Unset: videos stay on the volume under outputs/.",
    "s3://bucket[/prefix]", _s3_uri,
)  # fmt: skip
INBOX_CLAIM_LEASE_SECONDS: Variable[float] = _variable(
    "MT_INBOX_CLAIM_LEASE_SECONDS", "render", 900.0,
    "A `jobs/inbox/.claimed-*` entry untouched for longer than this is returned to the inbox (its "
    "claimer is taken to have died); read by JobQueue(claim_lease_seconds=...).",
    "seconds > 0", _seconds, shown_default="`900`",
)  # fmt: skip
AUDIO_MAX_SECONDS: Variable[float] = _variable(
    "MT_AUDIO_MAX_SECONDS", "render", 600.0,
    "The longest audio one speaker may give, in seconds: checked from the file's header before it is "
    "decoded, and again while decoding, since a header may lie (mt_assets/jobs/media.py).",
    "seconds > 0", _seconds, shown_default="`600`",
)  # fmt: skip
AUDIO_MIN_SAMPLE_RATE: Variable[int] = _variable(
    "MT_AUDIO_MIN_SAMPLE_RATE", "render", 8000,
    "The lowest sample rate, in Hz, a speaker's audio may have, checked from the header (resampling "
    "a 1 Hz file to 16 kHz multiplies it 16000 times).",
    "a positive whole number", _count,
)  # fmt: skip
IMAGE_MAX_PIXELS: Variable[int] = _variable(
    "MT_IMAGE_MAX_PIXELS", "render", 50_000_000,
    "The most pixels (width x height) `cond_image` may have, checked from the header before it is "
    "decoded (a small PNG can hold a huge image).",
    "a positive whole number", _count,
)  # fmt: skip

# Render jobs: their files and folders come from anyone who can write to jobs/inbox/
JOB_MAX_BYTES: Variable[int] = _variable(
    "MT_JOB_MAX_BYTES", "jobs", 1024 * 1024,
    "The largest job file (YAML or JSON) the CLI, the inbox and `jobs submit` read; checked before reading.",
    "a whole number of bytes > 0", _count, shown_default="`1048576` (1 MiB)",
)  # fmt: skip
PROMPT_MAX_CHARS: Variable[int] = _variable(
    "MT_PROMPT_MAX_CHARS", "jobs", 10_000,
    "The longest `prompt` or `negative_prompt` a job may give (T5 reads 512 tokens).",
    "a whole number > 0", _count, shown_default="`10000`",
)  # fmt: skip
INBOX_STABLE_SECONDS: Variable[float] = _variable(
    "MT_INBOX_STABLE_SECONDS", "jobs", 60.0,
    "An inbox entry younger than this is accepted only when its size and mtime are unchanged since the "
    "previous scan; an older one on first sight. A writer that stalls for longer must drop by rename "
    "(docs/rendering.md).",
    "seconds > 0", _seconds, shown_default="`60`",
)  # fmt: skip

# RunPod
RUNPOD_ENDPOINT: Variable[str] = _variable(
    "MT_RUNPOD_ENDPOINT", "runpod", "",
    "The RunPod serverless endpoint's id that renders go to with MT_RENDER_BACKEND=runpod "
    "(empty only against the RunPod SDK's local test API).",
    "an endpoint id", _text, shown_default="unset",
)  # fmt: skip
RUNPOD_API_BASE: Variable[str] = _variable(
    "MT_RUNPOD_API_BASE", "runpod", "https://api.runpod.ai/v2",
    "The RunPod API's base URL (tests and the SDK's local API point it at loopback).",
    "an http(s):// URL", _http_url,
)  # fmt: skip
RUNPOD_POLL_SECONDS: Variable[float] = _variable(
    "MT_RUNPOD_POLL_SECONDS", "runpod", 0.5,
    "The first wait between two /status polls of a dispatched render; each next wait is 1.5 times longer.",
    "seconds > 0", _seconds,
)  # fmt: skip
RUNPOD_POLL_MAX_SECONDS: Variable[float] = _variable(
    "MT_RUNPOD_POLL_MAX_SECONDS", "runpod", 10.0,
    "The longest wait between two /status polls.",
    "seconds > 0", _seconds,
)  # fmt: skip

# Control plane
RUN_LIMIT: Variable[int | None] = _variable(
    "MT_RUN_LIMIT", "control", None,
    "Dagster runs in progress at once; more wait in the queue.",
    "a positive whole number", _count, shown_default="`4` (deploy/dagster.yaml)",
)  # fmt: skip
GPU_SLOTS: Variable[int] = _variable(
    "MT_GPU_SLOTS", "control", 1,
    "The `gpu` pool's limit: local renders at once on this machine.",
    "a positive whole number", _count,
)  # fmt: skip
RUNPOD_SLOTS: Variable[int | None] = _variable(
    "MT_RUNPOD_SLOTS", "control", None,
    "The `runpod` pool's limit: the endpoint's maximum worker count. Unset: the instance's default "
    "pool limit (1 in deploy/dagster.yaml).",
    "a positive whole number", _count,
)  # fmt: skip
COMPUTE_LOGS_S3: Variable[str | None] = _variable(
    "MT_COMPUTE_LOGS_S3", "control", None,
    "s3://bucket/prefix for each step's stdout/stderr (dagster-aws's S3ComputeLogManager, endpoint and "
    "region as `s3_client`'s), so a webserver on another machine shows them. Unset: local files under "
    "$DAGSTER_HOME.",
    "s3://bucket[/prefix]", _s3_uri,
)  # fmt: skip

# Tests and benchmarks (read by mt_assets_tests, declared here so the docs list them)
GOLDEN_DIR: Variable[str | None] = _variable(
    "MT_GOLDEN_DIR", "tests", None,
    "The reference outputs of the original MultiTalk code for the tiny model (audio, DiT); "
    "the golden tests skip without them.",
    "a folder", _text, shown_default="`../shared/golden/multitalk-tiny`",
)  # fmt: skip
PIPELINE_GOLDEN_DIR: Variable[str | None] = _variable(
    "MT_PIPELINE_GOLDEN_DIR", "tests", None,
    "The reference outputs of the original MultiTalk pipeline for the tiny model.",
    "a folder", _text, shown_default="`../shared/golden/multitalk-tiny-pipeline`",
)  # fmt: skip
ACCEL_GOLDEN_DIR: Variable[str | None] = _variable(
    "MT_ACCEL_GOLDEN_DIR", "tests", None,
    "The reference outputs of the original MultiTalk code's acceleration paths (LoRA merging, TeaCache, "
    "quantized weights) for the tiny model.",
    "a folder", _text, shown_default="`../shared/golden/multitalk-tiny-accel`",
)  # fmt: skip


def get(name: str, env: Env | None = None) -> Any:
    """The value of the declared variable `name` (untyped: prefer the variable itself, e.g. VOLUME.read())."""
    if name not in VARIABLES:
        raise KeyError(f"{name}: not a declared variable (mt_assets/config.py)")
    return VARIABLES[name].read(env)


@dataclass(frozen=True)
class Settings:
    """What the CLI and Dagster start from."""

    volume: str = VOLUME.default
    profile: str = PROFILE.default
    source: str = SOURCE.default
    render_backend: str = RENDER_BACKEND.default

    @classmethod
    def from_env(cls, env: Env | None = None) -> Settings:
        return cls(
            volume=VOLUME.read(env),
            profile=PROFILE.read(env),
            source=SOURCE.read(env),
            render_backend=RENDER_BACKEND.read(env),
        )


DEFAULT_VOLUME = VOLUME.default
DEFAULT_PROFILE = PROFILE.default
DEFAULT_SOURCE = SOURCE.default


# -- S3 ----------------------------------------------------------------------------------------------


def s3_endpoint(env: Env | None = None) -> str | None:
    """The custom S3 endpoint: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; None: AWS's own."""
    env = os.environ if env is None else env
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None


def s3_region(env: Env | None = None, session: Any = None) -> str:
    """AWS_REGION, else boto3's default (AWS_DEFAULT_REGION, the profile), else us-east-1.

    With an explicit `env`, boto3's default is AWS_DEFAULT_REGION in `env`, not the process's."""
    if env is not None:
        return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    if session is None:
        import boto3

        session = boto3.session.Session()
    return os.environ.get("AWS_REGION") or session.region_name or "us-east-1"


@dataclass(frozen=True)
class S3Client:
    """A boto3 S3 client and where it points. No secrets: the credentials stay inside `session`."""

    client: Any
    endpoint: str | None  # the custom endpoint; None: AWS's own
    region: str
    session: Any = field(repr=False)  # boto3.session.Session: its credentials, to scrub messages


def s3_client(
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_attempts: int | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 120.0,
    max_pool_connections: int = 10,
    tcp_keepalive: bool = False,
    addressing_style: str | None = None,
    env: Env | None = None,
    session: Any = None,
) -> S3Client:
    """The one way mt_assets makes a boto3 S3 client. The caller closes `.client`.

    Endpoint: `endpoint_url`, else s3_endpoint(); with one, path-style addressing (MinIO and RunPod's
    S3 API expect it; no wildcard DNS name needed) unless `addressing_style` says otherwise. Region:
    `region`, else s3_region(). Credentials: boto3's chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    or a profile), or `session`, a boto3 Session holding explicit keys (volume_s3_client's). Retries:
    botocore's standard mode (AWS_MAX_ATTEMPTS or `max_attempts`). Checksums only where an operation requires them: some S3-compatible servers reject the newer headers.
    """
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or s3_endpoint(env)
    session = session or boto3.session.Session()
    region = region or s3_region(env, session)
    retries: dict[str, Any] = {"mode": "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts
    config = Config(
        region_name=region,
        retries=retries,  # type: ignore[arg-type]
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=tcp_keepalive,
        max_pool_connections=max_pool_connections,
        s3={"addressing_style": addressing_style or ("path" if endpoint else "auto")},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="mt-assets",
    )
    client = session.client("s3", endpoint_url=endpoint, config=config)
    return S3Client(client, endpoint, region, session)


class VolumeKeysError(ConfigError):
    """Only one of MT_VOLUME_S3_ACCESS_KEY_ID and MT_VOLUME_S3_SECRET_ACCESS_KEY is set."""


def volume_s3_client(env: Env | None = None, **kw: Any) -> S3Client:
    """The client of an `s3://` volume: MT_VOLUME_S3_* where set, else what `s3_client` uses.

    A volume's endpoint and keys are its own, so that an `s3://` source (AWS_* variables) can fill a
    volume somewhere else. The keys go straight into the boto3 session and no further."""
    import boto3

    env = os.environ if env is None else env
    key_id = VOLUME_S3_ACCESS_KEY_ID.read(env)
    secret = VOLUME_S3_SECRET_ACCESS_KEY.read(env)
    if (key_id is None) != (secret is None):
        missing = "MT_VOLUME_S3_SECRET_ACCESS_KEY" if secret is None else "MT_VOLUME_S3_ACCESS_KEY_ID"
        raise VolumeKeysError(f"{missing}: expected it with the other MT_VOLUME_S3_* key, got nothing")
    session = (
        boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
        if key_id is not None
        else None
    )
    kw.setdefault("endpoint_url", VOLUME_S3_ENDPOINT.read(env) or s3_endpoint(env))
    kw.setdefault("region", VOLUME_S3_REGION.read(env))
    return s3_client(env=env, session=session, **kw)


# -- the docs' table ---------------------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/configuration.md's tables of the MT_* variables, one per group."""
    out: list[str] = []
    for group, title in GROUPS.items():
        out += [f"### {title}", "", "| variable | default | takes | meaning |", "|---|---|---|---|"]
        for var in VARIABLES.values():
            if var.group == group:
                out.append(f"| `{var.name}` | {var.default_text} | {var.expected} | {var.meaning} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown(), end="")
