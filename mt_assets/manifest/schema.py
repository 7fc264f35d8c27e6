"""The manifest format: every file the system loads, declared and pinned.

A manifest (a "profile") is a YAML document that people write by hand:

    profile: my-system
    components:
      - name: wav2vec2                    # unique, [a-z0-9_-]+
        repo: TencentGameMate/chinese-wav2vec2-base
        revision: <40-hex commit, or a ref such as main or refs/pr/1 until locked>
        dir: chinese-wav2vec2-base        # folder under <volume>/models/
        files:
          - path: model.safetensors       # path in the repo, and under dir on the volume
            size: 380000000               # bytes; optional until locked
            sha256: <64 hex>              # LFS files
            git_sha1: <40 hex>            # files kept in git: the git blob id instead
            kind: weights                 # weights | tokenizer | processor | config
            estimated_size: 380000000     # bytes; planning only, for files not yet locked
      - name: lora-fusionx
        lora_scale: 1.0                   # a LoRA add-on: each weights file merged into the DiT at
        ...                               # load with this scale, in the order listed
      - name: dit-int8
        quantized: transformer            # transformer | t5: this unit's weights, quantized with
        ...                               # optimum-quanto: one .safetensors weights file and one .json
                                          # config file (its quantization map; models/quant.py)

    extends: multitalk-480p               # optional: a shipped profile whose components and bundles
                                          # come first; this document adds its own (an add-on)
    drop: [wan-dit, multitalk, t5]        # optional, with extends: base components (and their bundles)
                                          # this profile does not use; a dropped name may be declared
                                          # again (a replacement)
    presets: [fusionx]                    # optional: the job presets (jobs/schema.py) this profile serves

    bundles:                              # optional: files that must load together
      - name: t5-tokenizer                # unique, [a-z0-9_-]+
        loader: tokenizer                 # tokenizer | feature_extractor
        component: t5-tokenizer
        folder: google/umt5-xxl           # under the component's dir; default: the dir itself

A quantized component replaces the unit's float files: with `quantized: transformer` the DiT is built
from the `wan-dit` component's config.json and filled from the quantized file (no shards, no
multitalk.safetensors); with `quantized: t5` the T5 is read from it instead of the `t5` component.
LoRAs are never merged into quantized weights (MeiGen's reference ignores its LoRA scales there): a
profile with a quantized transformer and a `lora_scale` component is refused; MeiGen publishes the
LoRA-merged variant as a quantized file of its own (`quant_model_int8_FusionX.safetensors`).

A bundle is the component's non-weights files under `folder` (tokenizer, processor and
config files), loaded together with transformers from the volume, offline.

A file lands at `<volume>/models/<dir>/<path>` (its *target*). A file is *pinned* when it
has a sha256 or a git_sha1 to check against; until then an audit can only call it
`unpinned`. `estimated_size` lets an unlocked profile still answer "how much space will
this need"; it is never used to judge a file on the volume.

Parsing is strict: every error names the manifest, the component, the file (1-based #)
and the field, and says what was expected. Nothing here touches the network or a volume.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import yaml

from mt_assets.manifest.yamldata import load_yaml_owned

KINDS = ("weights", "tokenizer", "processor", "config")

_NAME = re.compile(r"^[a-z0-9_-]+$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")
_REF = re.compile(r"^[A-Za-z0-9._/-]+$")
_DRIVE = re.compile(r"^[A-Za-z]:")

_TOP_FIELDS = ("profile", "extends", "drop", "presets", "components", "bundles")
PRESETS = ("fusionx", "lightx2v")  # the step-distilled settings MeiGen's README runs (jobs/schema.py)
_BUNDLE_FIELDS = ("name", "loader", "component", "folder")
BUNDLE_LOADERS = ("tokenizer", "feature_extractor")
_COMPONENT_FIELDS = ("name", "repo", "revision", "dir", "files", "lora_scale", "quantized")
QUANTIZED_UNITS = ("transformer", "t5")  # load units (models/pipeline.py) that read a quantized file
_FILE_FIELDS = ("path", "size", "sha256", "git_sha1", "kind", "estimated_size")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names where, what and what was expected."""


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One file the system loads, with everything needed to fetch and verify it."""

    component: str
    repo: str
    revision: str
    dir: str
    path: str
    kind: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None
    estimated_size: int | None = None

    @property
    def target(self) -> str:
        """Where the file lives, relative to the volume root, '/'-separated."""
        return f"models/{self.dir}/{self.path}"

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None or self.git_sha1 is not None

    @property
    def planned_size(self) -> int | None:
        """Bytes to plan for: the pinned size, else the estimate, else unknown."""
        return self.size if self.size is not None else self.estimated_size


@dataclass(frozen=True)
class Component:
    name: str
    repo: str
    revision: str
    dir: str
    files: tuple[ManifestFile, ...]
    lora_scale: float | None = None  # set: a LoRA add-on, its weights files merged into the DiT at load
    quantized: str | None = None  # set: the load unit (transformer | t5) whose weights it holds, quantized

    @property
    def quant_files(self) -> tuple[ManifestFile, ManifestFile]:
        """(the quantized state dict, its quantization map) of a quantized component."""
        [weights] = [f for f in self.files if f.kind == "weights"]
        [qmap] = [f for f in self.files if f.kind == "config"]
        return weights, qmap

    @property
    def locked(self) -> bool:
        """True when the revision is a commit and every file has a size and a hash."""
        return is_commit(self.revision) and all(f.pinned and f.size is not None for f in self.files)


@dataclass(frozen=True)
class Bundle:
    name: str
    loader: str
    component: str
    folder: str  # relative to the component's dir; '' for the dir itself
    files: tuple[ManifestFile, ...]

    @property
    def location(self) -> str:
        """The folder to load from, relative to the volume root."""
        d = self.files[0].dir
        return f"models/{d}/{self.folder}" if self.folder else f"models/{d}"


@dataclass(frozen=True)
class Manifest:
    profile: str
    source: str  # where it was read from, as shown in messages
    components: tuple[Component, ...]
    bundles: tuple[Bundle, ...] = ()
    presets: tuple[str, ...] = ()  # job presets this profile serves
    extends: str | None = None  # the shipped profile it adds to (already composed in `components`)
    dropped: tuple[str, ...] = ()  # the base's components it does not use (`drop`)

    @cached_property
    def files(self) -> tuple[ManifestFile, ...]:
        return tuple(f for c in self.components for f in c.files)

    @property
    def loras(self) -> tuple[tuple[ManifestFile, float], ...]:
        """(file, scale) of every LoRA file, in the order they are merged: components, then files."""
        return tuple(
            (f, c.lora_scale)
            for c in self.components
            if c.lora_scale is not None
            for f in c.files
            if f.kind == "weights"
        )

    def quantized(self, unit: str) -> Component | None:
        """The component holding `unit`'s quantized weights (`quantized: transformer | t5`), if any."""
        return next((c for c in self.components if c.quantized == unit), None)

    def select(self, names: list[str]) -> Manifest:
        """The same manifest with only the named components (each must exist)."""
        chosen = [self.component(n) for n in names]
        bundles = tuple(b for b in self.bundles if b.component in names)
        return Manifest(
            profile=self.profile,
            source=self.source,
            components=tuple(chosen),
            bundles=bundles,
            presets=self.presets,
            extends=self.extends,
            dropped=self.dropped,
        )

    def only(self, targets: set[str]) -> Manifest:
        """The same manifest with only the files whose target is in `targets` (no bundles)."""
        components = []
        for c in self.components:
            files = tuple(f for f in c.files if f.target in targets)
            if files:
                components.append(
                    Component(
                        name=c.name,
                        repo=c.repo,
                        revision=c.revision,
                        dir=c.dir,
                        files=files,
                        lora_scale=c.lora_scale,
                        quantized=c.quantized,
                    )
                )
        return Manifest(
            profile=self.profile,
            source=self.source,
            components=tuple(components),
            presets=self.presets,
            extends=self.extends,
            dropped=self.dropped,
        )

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        known = ", ".join(c.name for c in self.components)
        raise ManifestError(f"manifest {self.source}: no component '{name}' (known: {known})")


def is_commit(revision: str) -> bool:
    return len(revision) == 40 and bool(_HEX.match(revision))


def parse_manifest(text: str, source: str, *, base: Callable[[str], Manifest] | None = None) -> Manifest:
    """Parse and validate manifest YAML; `source` names it in error messages.

    `base(name)` gives the profile an `extends:` names (default: the shipped profiles).
    """
    return _parse(text, source, base)


def load_manifest(path: str | Path, display: str | None = None) -> Manifest:
    """Read a manifest file; `display` is the name used in messages (default: the path given).

    The file is parsed as it is read: a million entries' text is never held whole.
    """
    shown = display or str(path)
    try:
        with open(path, encoding="utf-8") as stream:
            return _parse(stream, shown)
    except FileNotFoundError:
        raise ManifestError(f"manifest {shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {shown}: cannot be read: {e}") from None


def _parse(document: str | TextIO, source: str, base: Callable[[str], Manifest] | None = None) -> Manifest:
    try:
        data, owned = load_yaml_owned(document)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ManifestError(f"manifest {source}: not valid YAML{where}: {problem}") from None
    return _Parser(source, base=base, consume=owned).manifest(data)


def check_relative_path(value: str) -> str | None:
    """Why `value` is not a safe relative '/'-separated path, or None when it is."""
    if value == "":
        return "must not be empty"
    if "\x00" in value:
        return "must not contain a NUL character"
    if "\\" in value:
        return "must use '/' separators, not backslashes"
    if value.startswith("/") or _DRIVE.match(value):
        return "must be relative, not absolute"
    parts = value.split("/")
    if ".." in parts:
        return "must not contain '..'"
    if any(p in ("", ".") for p in parts):
        return "must not contain empty or '.' segments"
    return None


class _Parser:
    def __init__(
        self, source: str, *, base: Callable[[str], Manifest] | None = None, consume: bool = False
    ) -> None:
        self.base = base
        self.source = source
        # Drop each component's raw entries once parsed, so that the raw data and what is made of
        # it are never both whole (for a million files); only for data no alias reaches twice.
        self.consume = consume

    def fail(self, where: str, message: str) -> ManifestError:
        return ManifestError(f"manifest {self.source}: {where}{message}")

    def check_fields(self, mapping: dict[str, Any], known: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.fail(where, f"unknown field '{key}' (known: {', '.join(known)}){hint}")

    def mapping(self, value: Any, where: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"{what} must be a mapping, got {_kind_of(value)}")
        return value

    def string(self, mapping: dict[str, Any], field: str, where: str) -> str:
        if field not in mapping or mapping[field] is None:
            raise self.fail(where, f"field '{field}' is required")
        value = mapping[field]
        if not isinstance(value, str):
            raise self.fail(where, f"field '{field}' must be a string, got {_kind_of(value)}")
        return value

    def size(self, mapping: dict[str, Any], field: str, where: str) -> int | None:
        value = mapping.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"field '{field}' must be a whole number of bytes, got {_kind_of(value)}")
        if value < 0:
            raise self.fail(where, f"field '{field}' must not be negative, got {value}")
        return value

    def hex_digest(self, mapping: dict[str, Any], field: str, length: int, where: str) -> str | None:
        value = mapping.get(field)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(
                where, f"field '{field}' must be a string of {length} hex characters, got {_kind_of(value)}"
            )
        if len(value) != length:
            raise self.fail(where, f"field '{field}' must be {length} hex characters, got {len(value)}")
        if not _HEX.match(value):
            raise self.fail(where, f"field '{field}' must be lowercase hex (0-9, a-f), got '{value}'")
        return value

    def manifest(self, data: Any) -> Manifest:
        top = self.mapping(data, "", "the document")
        self.check_fields(top, _TOP_FIELDS, "")
        profile = self.string(top, "profile", "")
        if not _NAME.match(profile):
            raise self.fail("", f"field 'profile' must match [a-z0-9_-]+, got '{profile}'")
        extends = top.get("extends")
        inherited = self.base_profile(extends) if extends is not None else None
        dropped = self.drop(top.get("drop"), inherited)
        presets = self.presets(top.get("presets", []))
        raw_components = top.get("components")
        if not isinstance(raw_components, list) or not raw_components:
            raise self.fail("", "field 'components' must be a non-empty list")

        components: list[Component] = (
            [c for c in inherited.components if c.name not in dropped] if inherited else []
        )
        names: set[str] = {c.name for c in components}
        targets: set[str] = {f.target for c in components for f in c.files}
        for index, raw in enumerate(raw_components, start=1):
            component = self.component(raw, index)
            if self.consume:
                raw_components[index - 1] = None
            if component.name in names:
                raise self.fail(
                    f"component #{index}: ", f"field 'name': duplicate component name '{component.name}'"
                )
            names.add(component.name)
            for file_index, f in enumerate(component.files, start=1):
                target = f.target
                if target in targets:
                    raise self.fail(
                        f"component '{component.name}', file #{file_index}: ",
                        f"field 'path': target {target} is already declared by "
                        f"{_declared_by(target, [*components, component])}",
                    )
                targets.add(target)
            components.append(component)
        raw_bundles = top.get("bundles", [])
        if not isinstance(raw_bundles, list):
            raise self.fail("", f"field 'bundles' must be a list, got {_kind_of(raw_bundles)}")
        by_name = {c.name: c for c in components}
        bundles: list[Bundle] = []
        for b in inherited.bundles if inherited else ():
            if b.component not in dropped:
                bundles.append(b)
            elif b.component in by_name:  # replaced: the bundle is made again from the new component
                bundles.append(
                    self.bundle(
                        {
                            "name": b.name,
                            "loader": b.loader,
                            "component": b.component,
                            "folder": b.folder or None,
                        },
                        0,
                        by_name,
                    )
                )
        self.check_quantized(profile, components)
        bundle_names: set[str] = {b.name for b in bundles}
        for index, raw in enumerate(raw_bundles, start=1):
            bundle = self.bundle(raw, index, by_name)
            if bundle.name in bundle_names:
                raise self.fail(f"bundle #{index}: ", f"field 'name': duplicate bundle name '{bundle.name}'")
            bundle_names.add(bundle.name)
            bundles.append(bundle)
        return Manifest(
            profile=profile,
            source=self.source,
            components=tuple(components),
            bundles=tuple(bundles),
            presets=presets,
            extends=extends,
            dropped=tuple(sorted(dropped)),
        )

    def drop(self, raw: Any, inherited: Manifest | None) -> set[str]:
        if raw is None:
            return set()
        if inherited is None:
            raise self.fail("", "field 'drop' needs 'extends': it removes components of the base profile")
        if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
            raise self.fail(
                "", f"field 'drop' must be a non-empty list of component names, got {_kind_of(raw)}"
            )
        known = [c.name for c in inherited.components]
        unknown = [n for n in raw if n not in known]
        if unknown:
            raise self.fail(
                "",
                f"field 'drop': profile {inherited.profile} has no component '{unknown[0]}' (known: {', '.join(known)})",
            )
        return set(raw)

    def check_quantized(self, profile: str, components: list[Component]) -> None:
        """One quantized component per unit; no LoRA merged into a quantized DiT; no float file the
        quantized unit does not read (models/pipeline.py `unit_components` is what a load reads, and
        what the render record and the cold-start bench count)."""
        seen: dict[str, str] = {}
        for c in components:
            if c.quantized is None:
                continue
            if c.quantized in seen:
                raise self.fail(
                    f"component '{c.name}': ",
                    f"field 'quantized': component '{seen[c.quantized]}' already holds the quantized {c.quantized}",
                )
            seen[c.quantized] = c.name
        self.check_no_float_files(profile, components, seen)
        loras = [c.name for c in components if c.lora_scale is not None]
        if "transformer" in seen and loras:
            raise self.fail(
                f"component '{loras[0]}': ",
                f"field 'lora_scale': the DiT of this profile is quantized (component '{seen['transformer']}'); "
                "a LoRA is not merged into quantized weights (MeiGen's reference ignores its LoRA scales "
                "there): declare a quantized file with the LoRA merged in, such as MeiGen's "
                "quant_model_int8_FusionX.safetensors, instead",
            )

    def check_no_float_files(self, profile: str, components: list[Component], seen: dict[str, str]) -> None:
        """A quantized DiT reads only wan-dit's config.json (no shards, no multitalk adapter); a
        quantized T5 reads no `t5` component."""
        by_name = {c.name: c for c in components}
        drop = "drop it (field 'drop' with extends, or remove it from 'components')"
        if "transformer" in seen:
            quantized = f"the DiT of profile {profile} is quantized (component '{seen['transformer']}')"
            config = by_name.get("wan-dit")
            if config is None:
                raise self.fail(
                    "",
                    f"field 'components': {quantized} and is built from the config.json of a 'wan-dit' "
                    "component: declare one with only config.json",
                )
            extra = [f.path for f in config.files if f.path != "config.json"]
            if extra or not config.files:
                raise self.fail(
                    "component 'wan-dit': ",
                    f"{quantized}, so only its config.json is read; it declares {_declares(extra)}: "
                    "drop wan-dit and declare it again with config.json only",
                )
            if "multitalk" in by_name:
                raise self.fail(
                    "component 'multitalk': ",
                    f"{quantized} and holds the adapter, so multitalk is never read: {drop}",
                )
        if "t5" in seen and "t5" in by_name:
            raise self.fail(
                "component 't5': ",
                f"the T5 of profile {profile} is quantized (component '{seen['t5']}'), so the float t5 "
                f"is never read: {drop}",
            )

    def base_profile(self, name: Any) -> Manifest:
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail("", f"field 'extends' must name a shipped profile, got {name!r}")
        if self.base is None:
            from mt_assets.manifest import load_profile

            self.base = load_profile
        try:
            base = self.base(name)
        except ManifestError as e:
            raise self.fail("", f"field 'extends': {e}") from None
        if base.extends is not None:
            raise self.fail(
                "", f"field 'extends': profile {name} extends another profile itself; extend {base.extends}"
            )
        return base

    def presets(self, raw: Any) -> tuple[str, ...]:
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise self.fail("", f"field 'presets' must be a list of names, got {_kind_of(raw)}")
        for name in raw:
            if name not in PRESETS:
                raise self.fail("", f"field 'presets': unknown preset '{name}' (known: {', '.join(PRESETS)})")
        return tuple(raw)

    def bundle(self, raw: Any, index: int, components: dict[str, Component]) -> Bundle:
        where = f"bundle #{index}: "
        mapping = self.mapping(raw, where, "a bundle")
        name = self.string(mapping, "name", where)
        if not _NAME.match(name):
            raise self.fail(where, f"field 'name' must match [a-z0-9_-]+, got '{name}'")
        where = f"bundle '{name}': "
        self.check_fields(mapping, _BUNDLE_FIELDS, where)
        loader = self.string(mapping, "loader", where)
        if loader not in BUNDLE_LOADERS:
            raise self.fail(
                where, f"field 'loader' must be one of {', '.join(BUNDLE_LOADERS)}, got '{loader}'"
            )
        component_name = self.string(mapping, "component", where)
        component = components.get(component_name)
        if component is None:
            raise self.fail(
                where, f"field 'component': no component '{component_name}' (known: {', '.join(components)})"
            )
        folder = mapping.get("folder") or ""
        if not isinstance(folder, str):
            raise self.fail(where, f"field 'folder' must be a string, got {_kind_of(folder)}")
        if folder:
            problem = check_relative_path(folder)
            if problem:
                raise self.fail(where, f"field 'folder' {problem}, got {folder!r}")
        prefix = f"{folder}/" if folder else ""
        files = tuple(f for f in component.files if f.path.startswith(prefix) and f.kind != "weights")
        if not files:
            raise self.fail(
                where,
                f"no tokenizer, processor or config files of component '{component_name}' under '{folder}'",
            )
        return Bundle(name=name, loader=loader, component=component_name, folder=folder, files=files)

    def component(self, raw: Any, index: int) -> Component:
        where = f"component #{index}: "
        mapping = self.mapping(raw, where, "a component")
        name = self.string(mapping, "name", where)
        if not _NAME.match(name):
            raise self.fail(where, f"field 'name' must match [a-z0-9_-]+, got '{name}'")
        where = f"component '{name}': "
        self.check_fields(mapping, _COMPONENT_FIELDS, where)
        repo = self.string(mapping, "repo", where)
        if not _REPO.match(repo):
            raise self.fail(where, f"field 'repo' must look like 'owner/name', got '{repo}'")
        revision = self.string(mapping, "revision", where)
        if not _REF.match(revision) or ".." in revision:
            raise self.fail(
                where, f"field 'revision' must be a 40-hex commit or a ref name, got '{revision}'"
            )
        if _HEX.match(revision) and len(revision) >= 7 and len(revision) != 40:
            raise self.fail(
                where,
                f"field 'revision' looks like a commit but has {len(revision)} hex characters; a commit has 40",
            )
        directory = self.string(mapping, "dir", where)
        problem = check_relative_path(directory)
        if problem:
            raise self.fail(where, f"field 'dir' {problem}, got {directory!r}")
        raw_files = mapping.get("files")
        if not isinstance(raw_files, list) or not raw_files:
            raise self.fail(where, "field 'files' must be a non-empty list")
        files = tuple(
            self.file(raw_file, file_index, name, repo, revision, directory)
            for file_index, raw_file in enumerate(raw_files, start=1)
        )
        if self.consume:
            raw_files.clear()
        lora_scale = mapping.get("lora_scale")
        if lora_scale is not None:
            if (
                isinstance(lora_scale, bool)
                or not isinstance(lora_scale, (int, float))
                or not 0 < lora_scale <= 10
            ):
                raise self.fail(where, f"field 'lora_scale' must be a number in (0, 10], got {lora_scale!r}")
            if not any(f.kind == "weights" for f in files):
                raise self.fail(where, "field 'lora_scale': a LoRA component needs at least one weights file")
            lora_scale = float(lora_scale)
        quantized = mapping.get("quantized")
        if quantized is not None:
            if quantized not in QUANTIZED_UNITS:
                raise self.fail(
                    where, f"field 'quantized' must be one of {', '.join(QUANTIZED_UNITS)}, got {quantized!r}"
                )
            if lora_scale is not None:
                raise self.fail(where, "fields 'quantized' and 'lora_scale' exclude each other")
            kinds = sorted(f.kind for f in files)
            if kinds != ["config", "weights"] or not all(
                f.path.endswith(".safetensors" if f.kind == "weights" else ".json") for f in files
            ):
                raise self.fail(
                    where,
                    "field 'quantized': a quantized component has exactly one weights file (.safetensors, the "
                    "quantized state dict) and one config file (.json, its quantization map), got "
                    + ", ".join(f"{f.path} ({f.kind})" for f in files),
                )
        return Component(
            name=name,
            repo=repo,
            revision=revision,
            dir=directory,
            files=files,
            lora_scale=lora_scale,
            quantized=quantized,
        )

    def file(
        self, raw: Any, index: int, component: str, repo: str, revision: str, directory: str
    ) -> ManifestFile:
        where = f"component '{component}', file #{index}: "
        mapping = self.mapping(raw, where, "a file")
        self.check_fields(mapping, _FILE_FIELDS, where)
        path = self.string(mapping, "path", where)
        problem = check_relative_path(path)
        if problem:
            raise self.fail(where, f"field 'path' {problem}, got {path!r}")
        kind = self.string(mapping, "kind", where)
        if kind not in KINDS:
            raise self.fail(where, f"field 'kind' must be one of {', '.join(KINDS)}, got '{kind}'")
        return ManifestFile(
            component=component,
            repo=repo,
            revision=revision,
            dir=directory,
            path=path,
            kind=kind,
            size=self.size(mapping, "size", where),
            sha256=self.hex_digest(mapping, "sha256", 64, where),
            git_sha1=self.hex_digest(mapping, "git_sha1", 40, where),
            estimated_size=self.size(mapping, "estimated_size", where),
        )


def _declares(extra: list[str]) -> str:
    if not extra:
        return "no config.json"
    return extra[0] if len(extra) == 1 else f"{extra[0]} and {len(extra) - 1} other files"


def _declared_by(target: str, components: list[Component]) -> str:
    """Where `target` is first declared, as errors name it (only looked up for an error)."""
    for c in components:
        for index, f in enumerate(c.files, start=1):
            if f.target == target:
                return f"component '{c.name}', file #{index}"
    raise AssertionError(target)


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ('{value}')"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
