"""The tiny profile: the multitalk-480p layout at toy scale, built locally, for demos and tests.

`build_tiny_mirror(DIR)` writes a mirror folder in the volume's `<dir>/<path>` layout with
exactly the files of `multitalk-480p` (same dirs, names and formats: sharded original-format
DiT + index, Wan's `.pth` files in their own key naming, tokenizer folders built here,
wav2vec2 safetensors + configs, the adapter under multitalk key names), with random weights
small enough for a laptop CPU. Deterministic: two builds give byte-identical files.

The pinned manifest of those files is the `tiny` profile (profiles/tiny.yaml): the real
profile's components, dirs and paths, with the tiny files' sizes and sha256s and the revision
`tiny-local` (these files exist on no Hub). `tiny_manifest(DIR)` derives it from a build, so
a test can show the shipped profile is what the builder writes.

The same mirror holds the tiny add-ons' LoRA files (tiny/lora.py, at the paths of the real LoRA
profiles), so one mirror serves every tiny profile: `tiny` and its twins `tiny-fusionx`,
`tiny-lightx2v` (`extends: tiny` plus one pinned LoRA component; `tiny_addon_yaml(DIR, name)`
derives each from a build, as `tiny_manifest` does for `tiny`).

`build_tiny_mirror(DIR, scale="medium")` writes the same files at a benchmark size (~2.8 GB:
a DiT of dim 1536 and 10 blocks, 1.55 GB in 7 shards of 200-240 MB, split by bytes like the published
shards; an adapter of ~0.4 GB; a bf16 T5, a CLIP with both towers, a VAE and a wav2vec2 of
real formats at a few hundred MB or less), so that reads and casts dominate a load as on the
real set. Deterministic too, but not a shipped profile: its manifest (`medium`) is returned
and written beside the mirror. `MirrorScale` holds the sizes; `medium_scale(divisor)` gives the
same shapes with every width divided, for a quick smoke build; `scale_bytes` sizes a scale's
files without writing them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt_assets.manifest import Component, Manifest, ManifestError, load_profile
from mt_assets.manifest.lockfile import to_yaml
from mt_assets.manifest.schema import parse_manifest

if TYPE_CHECKING:  # the writers import torch; this module is imported by the CLI
    from mt_assets.models.vae import WanVAESizes

TEMPLATE_PROFILE = "multitalk-480p"
TINY_PROFILE = "tiny"
TINY_REVISION = "tiny-local"
MEDIUM_PROFILE = "medium"
WAN_DIR = "Wan2.1-I2V-14B-480P"
MULTITALK_DIR = "MeiGen-MultiTalk"
WAV2VEC2_DIR = "chinese-wav2vec2-base"
SCALES = ("tiny", "medium")


@dataclass(frozen=True)
class MirrorScale:
    """The sizes of a mirror's models. The widths must agree: the DiT's text_dim is the T5's dim,
    its image_dim the CLIP vision width, its audio_blocks/audio_channels wav2vec2's layers/width."""

    profile: str
    dit: Mapping[str, Any]  # Wan config.json (see tiny/dit.py TINY_DIT_CONFIG)
    t5: Mapping[str, int]  # see tiny/wan_parts.py TINY_T5
    clip_visual: Mapping[str, int]
    clip_textual: Mapping[str, int]
    vae: Mapping[str, Any]  # WanVAESizes fields
    wav2vec2: Mapping[str, Any]  # Wav2Vec2Config fields (see tiny/wav2vec2.py CONFIG)
    shards: int = 7
    shard_balance: str = "keys"  # "bytes" for equal-sized shards, like the published ones
    revision: str = field(default="")

    def vae_sizes(self) -> WanVAESizes:
        from mt_assets.models.vae import WanVAESizes

        return WanVAESizes(**self.vae)


def tiny_scale() -> MirrorScale:
    """The shipped tiny profile's sizes (changing them changes profiles/tiny.yaml)."""
    from mt_assets.tiny.dit import TINY_DIT_CONFIG
    from mt_assets.tiny.wan_parts import TINY_CLIP_TEXTUAL, TINY_CLIP_VISUAL, TINY_T5, TINY_VAE
    from mt_assets.tiny.wav2vec2 import CONFIG

    vae = {f: getattr(TINY_VAE, f) for f in ("base_dim", "z_dim", "dim_mult", "num_res_blocks")}
    return MirrorScale(
        profile=TINY_PROFILE,
        dit=TINY_DIT_CONFIG,
        t5=TINY_T5,
        clip_visual=TINY_CLIP_VISUAL,
        clip_textual=TINY_CLIP_TEXTUAL,
        vae=vae,
        wav2vec2=CONFIG,
        revision=TINY_REVISION,
    )


def medium_scale(divisor: int = 1) -> MirrorScale:
    """The benchmark-sized mirror (divisor 1: ~2.8 GB), or the same shapes with every width divided
    by `divisor` (same layer counts, shards and file set; 8 gives ~40 MB, a smoke-test size)."""
    from mt_assets.tiny.dit import TINY_DIT_CONFIG
    from mt_assets.tiny.wav2vec2 import CONFIG

    def w(n: int) -> int:
        return max(1, n // divisor)

    dim, t5_dim, clip_width, audio_width, audio_layers = w(1536), w(1024), w(1280), w(384), 6
    if clip_width % 80:
        raise ValueError(f"medium scale: CLIP width {clip_width} must be a multiple of Wan's head size 80")
    return MirrorScale(
        profile=MEDIUM_PROFILE,
        dit={
            **TINY_DIT_CONFIG,
            "dim": dim,
            "ffn_dim": w(4096),
            "num_heads": max(1, dim // 128),  # heads of 128 like the real DiT (one wider head when shrunk)
            "num_layers": 10,
            "text_dim": t5_dim,
            "image_dim": clip_width,
            "audio_blocks": audio_layers,
            "audio_channels": audio_width,
            "intermediate_dim": w(512),  # the reference's adapter widths
            "output_dim": w(768),
            "context_tokens": 32,
        },
        t5={
            "vocab": 256,  # the tiny tokenizers (same files at every scale)
            "dim": t5_dim,
            "dim_attn": t5_dim,
            "dim_ffn": w(2816),
            "num_heads": max(1, 16 // divisor),
            "num_layers": 8,
            "num_buckets": 32,
        },
        clip_visual={
            "width": clip_width,
            "mlp": 4 * clip_width,
            "layers": 6,
            "patch": 14,
            "image_size": 224,
            "embed_dim": w(1024),
        },
        clip_textual={
            "vocab": 256,
            "dim": w(512),
            "layers": 4,
            "max_len": 34,
            "type_size": 1,
            "embed_dim": w(1024),
        },
        vae={"base_dim": w(32), "z_dim": 16, "dim_mult": (1, 2, 4, 4), "num_res_blocks": 2},
        wav2vec2={
            **CONFIG,
            "conv_dim": [w(256)] * 7,
            "hidden_size": audio_width,
            "num_hidden_layers": audio_layers,
            "num_attention_heads": 6,
            "intermediate_size": 4 * audio_width,
        },
        shard_balance="bytes",
        revision=f"{MEDIUM_PROFILE}-local" if divisor == 1 else f"{MEDIUM_PROFILE}-div{divisor}-local",
    )


def tiny_twins() -> dict[str, str]:
    """{tiny twin: the real profile it copies}: the LoRA twins (tiny/lora.py TINY_LORAS) and the
    quantized ones (tiny/quant.py TINY_QUANTS), each `extends: tiny`."""
    from mt_assets.tiny.lora import TINY_LORAS
    from mt_assets.tiny.quant import TINY_QUANTS

    return {spec.profile: spec.real_profile for spec in (*TINY_LORAS, *TINY_QUANTS)}


def tiny_profile_names() -> list[str]:
    """The shipped tiny profiles: `tiny` and its twins (`tiny_twins`)."""
    return [TINY_PROFILE, *tiny_twins()]


def stale_tiny_files(root: str | Path) -> list[str]:
    """Targets of the shipped tiny profiles (tiny and its add-on twins) whose file in the mirror at
    `root` is missing or has other bytes (an older build: the tokenizers' bytes follow the
    sentencepiece version). 5 MB hashed."""
    from mt_assets.volume.hashing import hash_file

    stale = []
    files = {f.target: f for name in tiny_profile_names() for f in load_profile(name).files}
    for f in files.values():
        path = Path(root) / f.dir / f.path
        if not path.is_file() or path.stat().st_size != f.size or hash_file(path).sha256 != f.sha256:
            stale.append(f.target)
    return stale


def build_tiny_mirror(root: str | Path, *, seed: int = 0, scale: str | MirrorScale = "tiny") -> Manifest:
    """Write a mirror at `root` (must not exist or be empty) and return its pinned manifest.

    scale: "tiny" (the shipped `tiny` profile), "medium" (`medium_scale()`, ~2.8 GB, not shipped),
    or a MirrorScale. Built in a temporary folder beside `root` and renamed into place, so an
    interrupted build leaves no half mirror behind.
    """
    from mt_assets.models.text_encoder import T5_FILE
    from mt_assets.tiny.dit import tiny_reference_state, write_tiny_dit
    from mt_assets.tiny.lora import TINY_LORAS, lora_target, write_tiny_loras
    from mt_assets.tiny.quant import write_tiny_quants
    from mt_assets.tiny.wan_parts import (
        write_tiny_clip,
        write_tiny_t5,
        write_tiny_tokenizers,
        write_tiny_vae,
    )
    from mt_assets.tiny.wav2vec2 import write_tiny_wav2vec2

    sizes = _resolve_scale(scale)
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{sizes.profile} mirror {root}: exists and is not empty; remove it or pick another folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        wan = work / WAN_DIR
        write_tiny_dit(
            wan,
            work / MULTITALK_DIR,
            seed=seed,
            shards=sizes.shards,
            config=sizes.dit,
            balance=sizes.shard_balance,
        )
        write_tiny_t5(wan, seed=seed, sizes=sizes.t5)
        write_tiny_clip(wan, seed=seed, visual=sizes.clip_visual, textual=sizes.clip_textual)
        write_tiny_vae(wan, seed=seed, sizes=sizes.vae_sizes())
        write_tiny_tokenizers(wan)
        write_tiny_wav2vec2(work / WAV2VEC2_DIR, seed=seed, sizes=sizes.wav2vec2)
        write_tiny_loras(work, config=sizes.dit)  # the add-ons' LoRA files, for the tiny twins
        [fusionx] = [spec for spec in TINY_LORAS if spec.family == "fusionx"]
        write_tiny_quants(  # the quantized twins' files, made from the float ones just written
            work,
            dit_state=tiny_reference_state(sizes.dit, seed=seed),
            config=sizes.dit,
            t5_path=wan / T5_FILE,
            fusionx_lora=work.joinpath(*lora_target(fusionx)),
        )
        manifest = mirror_manifest(work, profile=sizes.profile, revision=sizes.revision)
        if root.exists():
            root.rmdir()
        os.replace(work, root)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def scale_bytes(scale: str | MirrorScale) -> dict[str, int]:
    """The bytes a scale's weight files will have (tensor data, without headers), from shapes alone:
    {"dit-shard-1".."dit-shard-N", "dit", "multitalk", "t5", "clip", "vae", "wav2vec2"}."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from mt_assets.models.clip_vision import wan_clip_textual_shapes, wan_clip_visual_shapes
    from mt_assets.models.dit import build_multitalk_transformer, is_adapter_key
    from mt_assets.models.dit_loading import reference_key_shapes
    from mt_assets.models.text_encoder import wan_t5_shapes
    from mt_assets.models.vae import wan_vae_keys
    from mt_assets.tiny.dit import shard_split

    sizes = _resolve_scale(scale)

    def numel(shape: tuple[int, ...]) -> int:
        return int(torch.Size(shape).numel())

    dit_shapes = reference_key_shapes(build_multitalk_transformer(sizes.dit, device="meta"))
    meta = {k: torch.empty(s, device="meta") for k, s in dit_shapes.items()}
    dit_keys = sorted(k for k in meta if not is_adapter_key(k))
    shards = shard_split(dit_keys, meta, sizes.shards, sizes.shard_balance)
    out = {f"dit-shard-{i + 1}": sum(4 * numel(dit_shapes[k]) for k in keys) for i, keys in enumerate(shards)}
    out["dit"] = sum(4 * numel(dit_shapes[k]) for k in dit_keys)
    out["multitalk"] = sum(4 * numel(s) for k, s in dit_shapes.items() if is_adapter_key(k))
    out["t5"] = sum(2 * numel(s) for s in wan_t5_shapes(**sizes.t5).values())
    clip = wan_clip_visual_shapes(**sizes.clip_visual) | wan_clip_textual_shapes(**sizes.clip_textual)
    out["clip"] = sum(4 * numel(s) for s in clip.values())
    out["vae"] = sum(4 * numel(s) for _, s in wan_vae_keys(sizes.vae_sizes()).values())
    with torch.device("meta"):
        w2v = Wav2Vec2Model(Wav2Vec2Config(**sizes.wav2vec2))
    out["wav2vec2"] = sum(4 * t.numel() for t in w2v.state_dict().values())
    return out


def _resolve_scale(scale: str | MirrorScale) -> MirrorScale:
    if isinstance(scale, MirrorScale):
        return scale
    if scale == "tiny":
        return tiny_scale()
    if scale == "medium":
        return medium_scale()
    raise ValueError(f"mirror scale {scale!r}: expected one of {', '.join(SCALES)}")


def tiny_manifest(mirror: str | Path) -> Manifest:
    """The tiny profile for a built mirror: the real profile's layout with the mirror's pins.

    Refuses a mirror whose files are not exactly those of the real profile.
    """
    return mirror_manifest(mirror)


def mirror_manifest(
    mirror: str | Path, *, profile: str = TINY_PROFILE, revision: str = TINY_REVISION
) -> Manifest:
    """A built mirror's manifest, named `profile`: the real profile's layout with the mirror's pins.

    Refuses a mirror whose files are not exactly those of the real profile.
    """
    mirror = Path(mirror)
    template = load_profile(TEMPLATE_PROFILE)
    expected = {f"{f.dir}/{f.path}" for f in template.files} | set(_addon_files())
    written = {p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file()}
    if written != expected:
        extra, missing = sorted(written - expected), sorted(expected - written)
        raise ManifestError(
            f"{profile} mirror {mirror}: files differ from profile {TEMPLATE_PROFILE}: extra {extra}, missing {missing}"
        )
    components = []
    for c in template.components:  # the add-ons' LoRA files are the twins' (tiny_addon_yaml)
        files = []
        for f in c.files:
            data_path = mirror / f.dir / f.path
            files.append(
                type(f)(
                    component=f.component,
                    repo=f.repo,
                    revision=revision,
                    dir=f.dir,
                    path=f.path,
                    kind=f.kind,
                    size=data_path.stat().st_size,
                    sha256=_sha256(data_path),
                )
            )
        components.append(
            Component(name=c.name, repo=c.repo, revision=revision, dir=c.dir, files=tuple(files))
        )
    source = f"profiles/{profile}.yaml" if profile == TINY_PROFILE else f"{profile}.yaml"
    draft = Manifest(profile=profile, source=source, components=tuple(components), bundles=template.bundles)
    return parse_manifest(to_yaml(draft), source)


def _twin_components(real_profile: str) -> list[Component]:
    """The components a real add-on profile declares itself (new ones, and replacements of the ones it
    drops), not those it inherits."""
    real = load_profile(real_profile)
    base = {c.name for c in load_profile(real.extends).components} if real.extends else set()
    return [c for c in real.components if c.name not in base or c.name in real.dropped]


def _addon_files() -> set[str]:
    """`<dir>/<path>` of every tiny twin's own files that the template profile does not have."""
    template = {f"{f.dir}/{f.path}" for f in load_profile(TEMPLATE_PROFILE).files}
    return {
        f"{f.dir}/{f.path}"
        for real in tiny_twins().values()
        for c in _twin_components(real)
        for f in c.files
        if f"{f.dir}/{f.path}" not in template
    }


def tiny_addon_yaml(mirror: str | Path, name: str) -> str:
    """The shipped text of a tiny twin (`tiny-fusionx`, `tiny-int8`, ...) for a built mirror: `extends:
    tiny`, the real profile's `drop` and presets, and the components it declares itself (name, repo,
    dir, paths, lora_scale, quantized) with the mirror files' sizes and sha256 and the revision
    `tiny-local`."""
    import yaml

    twins = tiny_twins()
    if name not in twins:
        raise ManifestError(f"tiny add-on profile '{name}': not one of {', '.join(twins)}")
    real = load_profile(twins[name])
    components = []
    for component in _twin_components(real.profile):
        files = []
        for f in component.files:
            path = Path(mirror) / f.dir / f.path
            if not path.is_file():
                raise ManifestError(
                    f"{name} mirror {mirror}: {f.dir}/{f.path} is missing; build the mirror again"
                )
            files.append(
                {"path": f.path, "kind": f.kind, "size": path.stat().st_size, "sha256": _sha256(path)}
            )
        components.append(
            {
                "name": component.name,
                "repo": component.repo,
                "revision": TINY_REVISION,
                "dir": component.dir,
                **({"lora_scale": component.lora_scale} if component.lora_scale is not None else {}),
                **({"quantized": component.quantized} if component.quantized is not None else {}),
                "files": files,
            }
        )
    doc: dict[str, Any] = {"profile": name, "extends": TINY_PROFILE}
    if real.dropped:
        doc["drop"] = list(real.dropped)
    if real.presets:
        doc["presets"] = list(real.presets)
    doc["components"] = components
    what = (
        f"{real.profile}'s quantized DiT and T5\nat toy scale (tiny float files "
        "quantized as MeiGen's are; tiny/quant.py)"
        if any(c.quantized for c in _twin_components(real.profile))
        else f"{real.profile}'s LoRA at toy scale (random\nweights in the real file's key families; tiny/lora.py)"
    )
    header = (
        f"The {name} profile: the tiny profile plus {what}, built by `mt-assets tiny build DIR`.\n"
        "Generated: do not edit; rebuild with `mt-assets tiny build DIR --update-profile`."
    )
    text = yaml.safe_dump(doc, sort_keys=False, width=200)
    return "".join(f"# {line}\n" for line in header.splitlines()) + text


def tiny_profile_yaml(manifest: Manifest) -> str:
    if manifest.profile != TINY_PROFILE:
        return to_yaml(
            manifest,
            f"The {manifest.profile} mirror: multitalk-480p's files at benchmark size, random weights, built\n"
            f"locally by `mt-assets tiny build DIR --scale {manifest.profile}` (deterministic). Not a shipped\n"
            "profile: pass this file with --manifest.",
        )
    header = (
        "The tiny profile: multitalk-480p's files at toy scale, random weights, built locally by\n"
        "`mt-assets tiny build DIR` (deterministic). Generated: do not edit; rebuild with\n"
        "`mt-assets tiny build DIR --update-profile` when the builder changes."
    )
    return to_yaml(manifest, header)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
