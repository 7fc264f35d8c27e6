"""Bundles: tokenizer and processor folders that must load together, from the volume, offline.

A manifest's `bundles:` name folders on the volume (see manifest/schema.py). Loading one means
what the worker will do at start-up: transformers' Auto classes on the volume path with
`local_files_only=True`, so a missing or broken file fails here, not in a cold start.

    tokenizer          AutoTokenizer (fast, from tokenizer.json) -> class, vocabulary size
    feature_extractor  AutoFeatureExtractor + AutoConfig -> classes, sampling rate, model width
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mt_assets.manifest import Bundle
from mt_assets.volume import LocalVolume


class BundleError(RuntimeError):
    """A bundle did not load; the message names the bundle, the folder and the cause."""


@dataclass(frozen=True)
class BundleLoad:
    name: str
    loader: str
    path: str  # absolute folder it was loaded from
    files: list[str]
    seconds: float
    loaded: dict[str, Any] = field(default_factory=dict)  # what loaded: classes and key facts

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loader": self.loader,
            "path": self.path,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            **self.loaded,
        }


def load_bundle(bundle: Bundle, volume: LocalVolume) -> BundleLoad:
    folder = volume.path(bundle.location)
    missing = [f.target for f in bundle.files if not volume.state(f.target).present]
    if missing:
        raise BundleError(f"bundle {bundle.name} at {folder}: missing {', '.join(missing)}")
    started = time.perf_counter()
    try:
        loaded = _LOADERS[bundle.loader](str(folder))
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for broken folders
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BundleError(f"bundle {bundle.name} at {folder}: {bundle.loader} did not load: {first}") from e
    return BundleLoad(
        name=bundle.name,
        loader=bundle.loader,
        path=str(folder),
        files=[f.path for f in bundle.files],
        seconds=time.perf_counter() - started,
        loaded=loaded,
    )


def _load_tokenizer(folder: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    sample = tokenizer("a talking head, 480p")["input_ids"]
    return {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer), "sample_tokens": len(sample)}


def _load_feature_extractor(folder: str) -> dict[str, Any]:
    from transformers import AutoConfig, AutoFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    return {
        "class": type(extractor).__name__,
        "sampling_rate": getattr(extractor, "sampling_rate", None),
        "do_normalize": getattr(extractor, "do_normalize", None),
        "config_class": type(config).__name__,
        "hidden_size": getattr(config, "hidden_size", None),
        "num_hidden_layers": getattr(config, "num_hidden_layers", None),
    }


_LOADERS = {"tokenizer": _load_tokenizer, "feature_extractor": _load_feature_extractor}
