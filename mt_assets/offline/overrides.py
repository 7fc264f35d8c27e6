"""The test seam: make one load unit do what a hand-written worker often does, so the verifier can
be shown to catch it. Used inside the probe process only; production passes no overrides.

    --override-unit UNIT=LOCATION      (CLI; `overrides={UNIT: LOCATION}` in Python and Dagster)

replaces UNIT's loader, for that one run, with the naive load from LOCATION instead of the volume:

    t5-tokenizer, clip-tokenizer   AutoTokenizer.from_pretrained(LOCATION)
                                   LOCATION "google/umt5-xxl": a repo id, the classic mistake
    wav2vec2                       AutoFeatureExtractor.from_pretrained(LOCATION)
                                   LOCATION a folder such as ~/.cache/huggingface/hub/.../snapshots/<sha>
    transformer, t5, clip, vae     the checkpoint file LOCATION (.safetensors or a torch .pth)
    any unit                       LOCATION "tcp://IPV4:PORT": the unit's bytes fetched by a native
                                   client, as hf_xet's Rust one fetches them: libc socket() and
                                   connect() through ctypes, then read to EOF; out of the audit
                                   hook's sight, so only a network namespace stops it (isolation.py).
                                   A failed connect raises the OSError the C library set.

Everything else about the run is the production path: `load_pipeline_components` is called as
the worker calls it. The override works by replacing the loader function in its module
(`mt_assets.models.tokenizers.load_t5_tokenizer`, ...), which the pipeline imports when it
runs; if the pipeline stops picking it up, the override reports itself as not applied and the
verification fails rather than passing silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

# unit -> (module, function) that load_pipeline_components calls for it
UNIT_LOADERS: dict[str, tuple[str, str]] = {
    "transformer": ("mt_assets.models.dit_loading", "load_multitalk_transformer"),
    "t5": ("mt_assets.models.text_encoder", "load_t5_encoder"),
    "t5-tokenizer": ("mt_assets.models.tokenizers", "load_t5_tokenizer"),
    "clip": ("mt_assets.models.clip_vision", "load_clip_vision"),
    "clip-tokenizer": ("mt_assets.models.tokenizers", "load_clip_tokenizer"),
    "vae": ("mt_assets.models.vae", "load_vae"),
    "wav2vec2": ("mt_assets.models.audio", "load_wav2vec2"),
}


def parse_overrides(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`UNIT=LOCATION` strings to a mapping; a ValueError names the bad one."""
    overrides: dict[str, str] = {}
    for value in values:
        unit, sep, location = value.partition("=")
        if not sep or not unit or not location:
            raise ValueError(f"override {value!r}: expected UNIT=LOCATION, e.g. t5-tokenizer=google/umt5-xxl")
        check_unit(unit)
        overrides[unit] = location
    return overrides


def check_unit(unit: str) -> None:
    if unit not in UNIT_LOADERS:
        raise ValueError(f"override: unknown unit '{unit}' (known: {', '.join(UNIT_LOADERS)})")


NATIVE_SCHEME = "tcp://"


def native_fetch(address: str) -> bytes:
    """Connect to IPV4:PORT and read to EOF through libc (ctypes): no Python socket, no audit event."""
    import ctypes
    import ipaddress
    import os
    import struct

    host, _, port = address.rpartition(":")
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM
    if fd < 0:
        raise OSError(ctypes.get_errno(), f"native socket(): {os.strerror(ctypes.get_errno())}")
    try:
        # struct sockaddr_in: family (host order), port (network order), address, 8 bytes of zero
        sockaddr = struct.pack("=H", 2) + struct.pack("!H", int(port)) + ipaddress.IPv4Address(host).packed
        sockaddr += bytes(8)
        if libc.connect(fd, sockaddr, len(sockaddr)) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"native connect() to {address}: {os.strerror(code)}")
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data
    finally:
        os.close(fd)


def naive_loader(unit: str, location: str) -> Callable[[], Any]:
    if location.startswith(NATIVE_SCHEME):

        def load() -> Any:
            return native_fetch(location[len(NATIVE_SCHEME) :])

    elif unit in ("t5-tokenizer", "clip-tokenizer"):

        def load() -> Any:
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(location)

    elif unit == "wav2vec2":

        def load() -> Any:
            from transformers import AutoFeatureExtractor

            return AutoFeatureExtractor.from_pretrained(location), None

    else:

        def load() -> Any:
            from mt_assets.models.checkpoints import load_pth, load_safetensors

            return load_safetensors(location) if location.endswith(".safetensors") else load_pth(location)

    return load


def apply_overrides(overrides: Mapping[str, str]) -> dict[str, bool]:
    """Swap in the naive loaders; the returned dict turns True per unit once its override ran."""
    applied: dict[str, bool] = {}
    for unit, location in overrides.items():
        check_unit(unit)
        module_name, function = UNIT_LOADERS[unit]
        module = importlib.import_module(module_name)
        load = naive_loader(unit, location)
        applied[unit] = False

        def replacement(
            *_args: Any, _unit: str = unit, _load: Callable[[], Any] = load, **_kwargs: Any
        ) -> Any:
            applied[_unit] = True
            return _load()

        setattr(module, function, replacement)
    return applied
