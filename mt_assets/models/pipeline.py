"""Everything a worker loads, from a volume, in one call: `load_pipeline_components`.

The renderer, the offline verifier and the RunPod worker all call this one function, so what
is proved offline is what renders. Each load unit reads the files of one or two manifest
components from `<volume>/models/<dir>/...`:

    transformer     wan-dit (config, shards, index) + multitalk (adapter, MeiGen's index), then
                    the profile's LoRA components (`lora_scale`), merged into the DiT in order
                    (models/lora.py; each file's report logged)
    t5              models_t5_umt5-xxl-enc-bf16.pth
    t5-tokenizer    google/umt5-xxl/
    clip            models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (vision tower)
    clip-tokenizer  xlm-roberta-large/
    vae             Wan2.1_VAE.pth
    wav2vec2        chinese-wav2vec2-base/ (model + feature extractor)

A quantized profile (a component with `quantized: transformer | t5`; models/quant.py) reads, for the
transformer, wan-dit's config.json and the quantized component's file and map (no shards, no adapter
file, no LoRA: the LoRA-merged variant is a quantized file of its own), and for the t5 the quantized
component instead of the bf16 .pth. The bf16 transformer repack does not apply to a quantized DiT
(it is made from the float files such a profile does not have); CLIP's does as before.

Per unit it reports seconds and bytes (the on-volume size of the files it loads); `unit_components`
gives a unit's components for a manifest (UNITS, plus the LoRA components for the transformer).

Time to first step. `background=("transformer",)` loads the other units first, then starts those
in one background thread and returns; `PipelineComponents.wait(unit)` blocks until a background
unit is in (and re-raises its error). A renderer then encodes the prompt, image and audio while
the DiT's shards are still being read, so a cold render's first denoising step starts about when
the DiT's last byte is in, not after the whole set has loaded and the encoders have run one after
another. The encoders' files are read before the DiT's, not beside them: both share one volume's
bandwidth, and of the two only the encoders have work to do after their last byte (encoding),
which can then run under the DiT's read; the DiT's cast keeps pace with its own read. Measured on
a read-bound volume (benchmarks/cold_start.py --read-rate 200), starting both at once put the
encoders' last byte next to the DiT's and the encoding after both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mt_assets.manifest import Manifest, ManifestError
from mt_assets.volume import LocalVolume

if TYPE_CHECKING:  # torch is imported when loading, not when this module is (Definitions, the CLI)
    import torch

    from mt_assets.models.reading import LoadStrategy

log = logging.getLogger(__name__)

# unit -> the manifest components whose files it reads (the transformer: also the LoRA add-ons,
# which depend on the profile; see unit_components)
UNITS: dict[str, tuple[str, ...]] = {
    "transformer": ("wan-dit", "multitalk"),
    "t5": ("t5",),
    "t5-tokenizer": ("t5-tokenizer",),
    "clip": ("clip",),
    "clip-tokenizer": ("clip-tokenizer",),
    "vae": ("vae",),
    "wav2vec2": ("wav2vec2",),
}


def unit_components(manifest: Manifest, unit: str) -> tuple[str, ...]:
    """The components whose files `unit` reads from this manifest: UNITS[unit], and for the
    transformer the manifest's LoRA components (those with a `lora_scale`), in merge order."""
    quantized = manifest.quantized(unit)
    if quantized is not None:  # the DiT: built from wan-dit's config.json, filled from the quantized file
        return ("wan-dit", quantized.name) if unit == "transformer" else (quantized.name,)
    if unit == "transformer":
        return UNITS[unit] + tuple(c.name for c in manifest.components if c.lora_scale is not None)
    return UNITS[unit]


def loadable_units(manifest: Manifest) -> list[str]:
    """The load units whose components (`unit_components`) the manifest declares, in UNITS order."""
    names = {c.name for c in manifest.components}
    return [unit for unit in UNITS if set(unit_components(manifest, unit)) <= names]


def loaded_components(manifest: Manifest) -> set[str]:
    """Every component a whole load reads from this manifest (the render record's model files)."""
    return {name for unit in UNITS for name in unit_components(manifest, unit)}


@dataclass(frozen=True)
class LoadReport:
    unit: str
    components: tuple[str, ...]
    seconds: float
    bytes: int
    files: tuple[str, ...]  # targets, relative to the volume, of the files read
    repack: str | None = None  # the repack read instead of the originals (repacks/<name>/), if any

    def to_json(self) -> dict[str, Any]:
        return {
            "components": list(self.components),
            "seconds": round(self.seconds, 3),
            "bytes": self.bytes,
            "repack": self.repack,
        }


@dataclass
class PipelineComponents:
    transformer: Any = None
    t5: Any = None
    t5_tokenizer: Any = None
    clip: Any = None
    clip_tokenizer: Any = None
    vae: Any = None
    wav2vec2: Any = None  # (feature extractor, model)
    reports: dict[str, LoadReport] = field(default_factory=dict)
    # units still loading in the background (load_pipeline_components(background=...))
    pending: dict[str, Future[Any]] = field(default_factory=dict, repr=False)

    def wait(self, *units: str) -> None:
        """Block until these background units (default: all) are loaded; re-raise a load's error."""
        for unit in units or tuple(self.pending):
            future = self.pending.get(unit)
            if future is None:
                continue
            loaded = future.result()  # the load's own exception, raised here
            setattr(self, unit.replace("-", "_"), loaded)
            del self.pending[unit]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.reports.values())

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.reports.values())


def load_pipeline_components(
    volume: LocalVolume,
    manifest: Manifest,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    only: list[str] | None = None,
    on_loaded: Callable[[LoadReport], None] | None = None,
    strategy: LoadStrategy | None = None,
    repacks: bool = True,
    background: Collection[str] = (),
) -> PipelineComponents:
    """Load every unit (or `only` those) from the volume; each loader is strict about keys.

    dtype: default float32 (CPU); bf16 on a GPU, for the DiT, T5 and CLIP (the VAE and wav2vec2
    stay float32, as in the reference).
    strategy: how every unit's weight files are read (`mmap`, `sequential`, `parallel`; see
    mt_assets.models.reading): the safetensors files (DiT, adapter, wav2vec2, repacks) by the
    strategy's reader, the `.pth` files (T5, CLIP, VAE) memory-mapped and then the ranges the loader
    keeps read the strategy's way; None: $MT_LOAD_STRATEGY, else the default. Checked before anything
    is loaded.
    repacks: for a bf16 load, read the DiT and CLIP from their bf16 repacks (`<volume>/repacks/`)
    when they exist, were made from the files the manifest pins now, and verify (hash cache);
    else the originals (a repack that fails verification: with a RepackWarning). The report's
    `repack` and `files` say which was read. Bit for bit the same weights either way.
    background: units loaded by a background thread (in order, one after another), started once
    this thread has loaded the others; they are in `result.pending` until `result.wait()`.
    `on_loaded` is then called from that thread too.
    """
    import torch

    from mt_assets.models.reading import check_strategy, strategy_from_env

    strategy = strategy_from_env() if strategy is None else check_strategy(strategy)

    dtype = dtype or torch.float32
    from mt_assets.models.audio import load_wav2vec2
    from mt_assets.models.clip_vision import load_clip_vision
    from mt_assets.models.dit_loading import load_multitalk_transformer, read_wan_config
    from mt_assets.models.quant import load_quantized_t5, load_quantized_transformer
    from mt_assets.models.repack import (
        CLIP_FILE_NAME,
        UNIT_REPACK,
        RepackManifest,
        applicable_repacks,
        repack_inputs,
        usable_repack,
    )
    from mt_assets.models.text_encoder import load_t5_encoder
    from mt_assets.models.tokenizers import load_clip_tokenizer, load_t5_tokenizer
    from mt_assets.models.vae import load_vae

    def one_file(component: str) -> Path:
        [f] = manifest.component(component).files
        return volume.path(f.target)

    def folder(component: str) -> Path:
        files = manifest.component(component).files
        return volume.path(files[0].target).parent

    def dir_of(component: str) -> Path:
        return volume.root / "models" / manifest.component(component).dir

    def quantized(unit: str) -> tuple[Path, Path] | None:
        """(quantized file, its map) on the volume for a quantized unit; None for a float one."""
        component = manifest.quantized(unit)
        if component is None:
            return None
        weights, qmap = component.quant_files
        return volume.path(weights.target), volume.path(qmap.target)

    def load_transformer() -> Any:
        quant = quantized("transformer")
        if quant is not None:
            return load_quantized_transformer(
                dir_of("wan-dit") / "config.json", *quant, device=device, dtype=dtype, strategy=strategy
            )
        return load_multitalk_transformer(
            dir_of("wan-dit"),
            dir_of("multitalk") / "diffusion_pytorch_model.safetensors.index.json",
            device=device,
            dtype=dtype,
            strategy=strategy,
        )

    def load_t5() -> Any:
        quant = quantized("t5")
        if quant is not None:
            return load_quantized_t5(*quant, device=device, dtype=dtype, strategy=strategy)
        return load_t5_encoder(one_file("t5"), dtype=dtype, device=device, strategy=strategy)

    loaders: dict[str, Callable[[], Any]] = {
        "transformer": load_transformer,
        "t5": load_t5,
        "t5-tokenizer": lambda: load_t5_tokenizer(folder("t5-tokenizer")),
        "clip": lambda: load_clip_vision(one_file("clip"), dtype=dtype, device=device, strategy=strategy),
        "clip-tokenizer": lambda: load_clip_tokenizer(folder("clip-tokenizer")),
        # The reference keeps these two in float32 whatever the DiT's dtype: the VAE decodes the
        # pixels (0.5 GB), and wav2vec2 runs on the CPU in fp32 in generate_multitalk.py.
        "vae": lambda: load_vae(one_file("vae"), dtype=torch.float32, device=device, strategy=strategy),
        "wav2vec2": lambda: load_wav2vec2(
            dir_of("wav2vec2"), dtype=torch.float32, device=device, strategy=strategy
        ),
    }
    # bf16 repacks (mt_assets.models.repack): used for a bf16 load when current and intact
    use_repacks = dtype == torch.bfloat16 and repacks
    repack_loaders: dict[str, Callable[[RepackManifest], Any]] = {
        "transformer": lambda r: load_multitalk_transformer(
            volume.root / r.folder,
            None,
            config=read_wan_config(dir_of("wan-dit") / "config.json"),
            device=device,
            dtype=dtype,
            strategy=strategy,
        ),
        "clip": lambda r: load_clip_vision(
            volume.root / r.folder / CLIP_FILE_NAME, dtype=dtype, device=device, strategy=strategy
        ),
    }
    units = only or list(UNITS)
    unknown = [u for u in units if u not in UNITS]
    if unknown:
        raise ManifestError(f"load: unknown units {unknown} (known: {', '.join(UNITS)})")
    late = [u for u in units if u in background]
    unknown_background = [u for u in background if u not in units]
    if unknown_background:
        raise ManifestError(
            f"load: background units {unknown_background} are not among those loaded ({units})"
        )
    result = PipelineComponents()

    loras = [(f, scale) for f, scale in manifest.loras]
    loras_by_component = {f.component for f, _ in loras}

    def merge_into(transformer: Any) -> list[tuple[str, int]]:
        """Merge the manifest's LoRA files into the loaded DiT; (target, size) of each file read."""
        if not loras:
            return []
        from mt_assets.models.lora import merge_loras

        reports = merge_loras(
            transformer,
            [(volume.path(f.target), scale) for f, scale in loras],
            dtype=dtype,
            strategy=strategy,
        )
        for r in reports:
            log.info("%s", r.summary())
        return [(f.target, f.size or volume.path(f.target).stat().st_size) for f, _ in loras]

    def check_loras() -> None:
        """A LoRA file that is not there fails the load before the DiT's shards are read (minutes)."""
        from mt_assets.models.lora import LoraError

        for f, _ in loras:
            if not volume.path(f.target).is_file():
                raise LoraError(
                    f"LoRA {volume.path(f.target)} (component '{f.component}'): missing from the volume"
                )

    def load_unit(unit: str) -> Any:
        components = unit_components(manifest, unit)
        if unit == "transformer":
            check_loras()
        # the unit's own files (LoRAs: merge_into); a quantized DiT's wan-dit declares only its
        # config.json (manifest/schema.py check_quantized), so every declared file is read
        files = tuple(
            f for name in components if name not in loras_by_component for f in manifest.component(name).files
        )
        started = time.perf_counter()
        repack = (
            usable_repack(volume, manifest, UNIT_REPACK[unit])
            if use_repacks and unit in UNIT_REPACK and UNIT_REPACK[unit] in applicable_repacks(manifest)
            else None
        )
        if repack is not None:
            loaded = repack_loaders[unit](repack)
            # what was read: the repack's files (and, for the DiT, the source's config.json)
            read = [(t, volume.path(t).stat().st_size) for t in repack_inputs(manifest, repack)]
        else:
            loaded = loaders[unit]()
            read = [(f.target, f.size or volume.path(f.target).stat().st_size) for f in files]
        if unit == "transformer":
            read += merge_into(loaded)  # after the originals or the bf16 repack alike
        report = LoadReport(
            unit=unit,
            components=components,
            seconds=time.perf_counter() - started,
            bytes=sum(size for _, size in read),
            files=tuple(t for t, _ in read),
            repack=repack.name if repack is not None else None,
        )
        result.reports[unit] = report
        if on_loaded is not None:
            on_loaded(report)
        return loaded

    for unit in units:
        if unit not in background:
            setattr(result, unit.replace("-", "_"), load_unit(unit))
    if late:
        # Started only now, so the units above had the volume's bandwidth to themselves (module
        # docstring); one thread for all of them, in order.
        futures: dict[str, Future[Any]] = {u: Future() for u in late}

        def load_late() -> None:
            failed: BaseException | None = None
            for unit in late:
                if failed is None:
                    try:
                        futures[unit].set_result(load_unit(unit))
                        continue
                    except BaseException as e:
                        failed = e
                futures[unit].set_exception(failed)

        result.pending.update(futures)
        threading.Thread(target=load_late, name="mt-load-background", daemon=True).start()
    return result
