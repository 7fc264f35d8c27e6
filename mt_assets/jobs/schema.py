"""The render job: one schema for the CLI, the Dagster inbox and the RunPod worker.

A job is a YAML or JSON mapping. MultiTalk's own input files (`generate_multitalk.py
--input_json`) are accepted as users already write them:

    prompt: "A woman is talking in a studio."
    cond_image: multi2.png                       # media references: see media.py
    cond_audio: {person1: 1.wav, person2: 2.wav}  # person2 optional
    audio_type: para                             # para | add; two speakers only
    bbox:                                        # optional; exactly the speakers of cond_audio
      person1: [x_min, y_min, x_max, y_max]      # source-image pixels, kept as given. As in the
      person2: [x_min, y_min, x_max, y_max]      # reference, x counts ROWS and y COLUMNS

plus our settings, each with the default `generate_multitalk.py` uses:

    id               [A-Za-z0-9_-]{1,64}; default: the job file's stem
    negative_prompt  MultiTalk's English negative prompt (DEFAULT_NEGATIVE_PROMPT); "" means that default,
                     as in the reference's generate()
    mode             clip (one clip of `frames`) | streaming (clips of `frames` for the whole audio)
    frames           81; 4n+1, 5..1001 (in streaming mode: the frames of each clip)
    size             multitalk-480 | multitalk-720 (the reference's size buckets) | WxH, both
                     multiples of 16 in 16..2048
    steps            40; 1..1000
    shift            7 for multitalk-480 and WxH, 11 for multitalk-720; (0, 100]
    text_guidance    5.0; 0..100
    audio_guidance   4.0; 0..100
    seed             42; 0..2**32-1
    color_correction 1.0; 0..1 (the CLI default of the reference; 0 switches it off)
    apg              false | true | {momentum: -0.75, norm_threshold: 55} (either key may be left out;
                     momentum in [-1, 1], norm_threshold > 0)
    motion_frames    25; 1 mod 4; in streaming mode fewer than `frames`
    rerender         false
    teacache         false | true | {threshold: 0.2}: skip DiT evaluations whose time modulation barely
                     moved (MeiGen's --use_teacache; render/teacache.py); true means threshold 0.2; > 0
    preset           fusionx | lightx2v (optional): the settings MeiGen's README runs with a step-distilled
                     LoRA; they replace the defaults of steps, text_guidance, audio_guidance and shift,
                     and fields the job gives win over them:
                         fusionx   steps 8, text_guidance 1.0, audio_guidance 2.0, shift 2
                         lightx2v  steps 4, text_guidance 1.0, audio_guidance 2.0, shift 2
                     The profile must serve the preset (its `presets`: the LoRA merged into the DiT);
                     `check_preset_served` refuses it elsewhere, naming the profiles that serve it.
    job_sha256       set by the reader (reader.py): the sha256 of the job file as read; a value given in
                     a file is replaced, a stored job keeps the one recorded when it was accepted

Choices where the reference has none:
* `audio_type` may be left out with two speakers: 'para' (what MultiTalk's two-person examples use).
  With one speaker it is accepted and ignored (stored as 'para').
* A speaker given as null or as the string 'None' is silent: the reference's 'None' path, zeros as
  long as the other speaker. Only one of two may be silent.
* `motion_frames` only matters in streaming mode, so only there must it be fewer than `frames`.
* `tts_audio` (MultiTalk's text-to-speech input) is refused: there is no TTS here.

Validation stops at the first problem and names the field and the value:

    render job jobs/inbox/a1.yaml: field 'cond_image': '../../etc/passwd' is outside the allowed roots ...
    render job a1.json: field 'frams': unknown field; did you mean 'frames'?

`RenderJob.to_json()` gives every effective setting in this same format (media references resolved
to absolute paths or s3:// URIs; `teacache` as false or {threshold}, `preset` as given or null, and the
preset's settings as the explicit fields they became), so parse_job(job.to_json(), ...) gives the job back.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mt_assets import config
from mt_assets.jobs.audio_prep import AUDIO_TYPES
from mt_assets.jobs.media import MediaError, resolve_media

# MultiTalk's own negative prompt (`sample_neg_prompt` of wan/configs/wan_multitalk_14B.py), which
# generate() uses when none is given; Wan's shared config has a Chinese one, which MultiTalk does not use.
DEFAULT_NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
    "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
    "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
    "fused fingers, still picture, messy background, three legs, many people in the background, "
    "walking backwards"
)
MODES = ("clip", "streaming")
SIZE_BUCKETS = ("multitalk-480", "multitalk-720")
SPEAKERS = ("person1", "person2")
DEFAULT_SHIFT = {"multitalk-480": 7.0, "multitalk-720": 11.0}  # WxH: as multitalk-480
WXH_SHIFT = 7.0
APG_MOMENTUM = -0.75
APG_NORM_THRESHOLD = 55.0
APG_NORM_THRESHOLD_MAX = 1e6
FRAMES_RANGE = (5, 1001)
STEPS_RANGE = (1, 1000)
SIDE_RANGE = (16, 2048)
SEED_MAX = 2**32 - 1
GUIDANCE_MAX = 100.0
SHIFT_MAX = 100.0
TEACACHE_THRESHOLD = 0.2  # `teacache: true` (the reference CLI's --teacache_thresh)
TEACACHE_THRESHOLD_MAX = 1e12  # tests use thresholds of 10^5 on the tiny random weights


@dataclass(frozen=True)
class Preset:
    """The settings a preset gives a job (fields the job gives win)."""

    steps: int
    text_guidance: float
    audio_guidance: float
    shift: float


# MeiGen's README, for the FusionX and lightx2v LoRAs. The profiles that serve them: manifest `presets`.
PRESETS: dict[str, Preset] = {
    "fusionx": Preset(steps=8, text_guidance=1.0, audio_guidance=2.0, shift=2.0),
    "lightx2v": Preset(steps=4, text_guidance=1.0, audio_guidance=2.0, shift=2.0),
}

FIELDS = (
    "id",
    "prompt",
    "negative_prompt",
    "cond_image",
    "cond_audio",
    "audio_type",
    "bbox",
    "mode",
    "frames",
    "size",
    "steps",
    "shift",
    "text_guidance",
    "audio_guidance",
    "seed",
    "color_correction",
    "apg",
    "motion_frames",
    "rerender",
    "teacache",
    "preset",
    "job_sha256",
)
_APG_FIELDS = ("momentum", "norm_threshold")
_TEACACHE_FIELDS = ("threshold",)
_UNSUPPORTED = {
    "tts_audio": "text-to-speech input is not supported; synthesise the speech first and give it as "
    "cond_audio (a WAV, FLAC, MP3, M4A or video file)",
}
# The one rule for job ids: they name files and folders on the volume (jobs/*, outputs/<id>/).
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
JOB_ID_RULE = "1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'"
_WXH = re.compile(r"([0-9]+)x([0-9]+)")  # ASCII digits only (\d would take ٦٤)
_SHA256 = re.compile(r"[0-9a-f]{64}")
JOB_SHA256 = "job_sha256"  # set by the reader: the sha256 of the job file's bytes as read
QUOTED_CHARS = 100  # at most this much of any value is quoted in a message
_REPR = reprlib.Repr()  # bounded repr: nested values a few levels and items deep, long strings cut
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, QUOTED_CHARS, QUOTED_CHARS
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 6
_SILENT = "None"  # the reference's spelling of a silent speaker
DICT_SOURCE = "<dict>"


class JobError(ValueError):
    """A job that cannot be rendered. `str()` names the job, the field and the value."""

    def __init__(self, source: str, field: str | None, message: str) -> None:
        self.source = source
        self.field = field
        where = f"render job {source}: field {field!r}" if field else f"render job {source}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Apg:
    """Adaptive projected guidance settings (`generate_multitalk.py --use_apg`)."""

    momentum: float
    norm_threshold: float


@dataclass(frozen=True)
class TeaCacheSettings:
    """TeaCache step skipping (`generate_multitalk.py --use_teacache --teacache_thresh`)."""

    threshold: float


@dataclass(frozen=True)
class RenderJob:
    """A validated job: every setting effective, media references resolved."""

    id: str
    prompt: str
    negative_prompt: str
    cond_image: str  # absolute path or s3:// URI
    cond_audio: tuple[str | None, ...]  # person1[, person2]; None: a silent speaker (two speakers only)
    audio_type: str  # 'para' | 'add' ('para' for one speaker; unused then)
    bbox: tuple[tuple[float, float, float, float], ...] | None  # person1[, person2] order
    mode: str
    frames: int
    size: str
    steps: int
    shift: float
    text_guidance: float
    audio_guidance: float
    seed: int
    color_correction: float
    apg: Apg | None
    motion_frames: int
    rerender: bool
    source: str  # the job file, or '<dict>'
    job_sha256: str | None = (
        None  # of the job file's bytes as read (reader.py); None for a job given as a mapping
    )
    teacache: TeaCacheSettings | None = None
    preset: str | None = None  # its settings are in steps, text_guidance, ... already

    @property
    def speakers(self) -> int:
        return len(self.cond_audio)

    @property
    def size_wh(self) -> tuple[int, int] | None:
        """(W, H) for a 'WxH' size, None for the reference's size buckets."""
        match = _WXH.fullmatch(self.size)
        return (int(match[1]), int(match[2])) if match else None

    def to_json(self) -> dict[str, Any]:
        """Every effective setting, in the job format (JSON-serialisable; `source` is not a setting)."""
        names = SPEAKERS[: len(self.cond_audio)]
        return {
            "id": self.id,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "cond_image": self.cond_image,
            "cond_audio": dict(zip(names, self.cond_audio, strict=True)),
            "audio_type": self.audio_type,
            "bbox": None
            if self.bbox is None
            else {n: list(b) for n, b in zip(names, self.bbox, strict=True)},
            "mode": self.mode,
            "frames": self.frames,
            "size": self.size,
            "steps": self.steps,
            "shift": self.shift,
            "text_guidance": self.text_guidance,
            "audio_guidance": self.audio_guidance,
            "seed": self.seed,
            "color_correction": self.color_correction,
            "apg": False
            if self.apg is None
            else {"momentum": self.apg.momentum, "norm_threshold": self.apg.norm_threshold},
            "motion_frames": self.motion_frames,
            "rerender": self.rerender,
            "teacache": False if self.teacache is None else {"threshold": self.teacache.threshold},
            "preset": self.preset,
            **({JOB_SHA256: self.job_sha256} if self.job_sha256 else {}),
        }


# --- validation ------------------------------------------------------------------------------


def parse_job(
    doc: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path,
    volume_root: Path | None = None,
    allowed_roots: Sequence[Path] = (),
    check_media: bool = True,
) -> RenderJob:
    """Validate a job document; relative media references are relative to `base_dir`.

    With check_media (the default) the image and audio are decoded too (`load_job_media`), so a
    missing or undecodable file, audio too short for `frames` and a box outside the image are
    reported now rather than at render time. Raises JobError.
    """
    if not isinstance(doc, Mapping):
        raise JobError(source, None, f"expected a mapping of fields, got {describe_kind(doc)}")
    fields = _Fields(doc, source)
    fields.check_names()

    def resolve(field: str, ref: str) -> str:
        try:
            return resolve_media(ref, base_dir=base_dir, volume_root=volume_root, allowed_roots=allowed_roots)
        except MediaError as e:
            raise JobError(source, field, str(e)) from None

    job_id = fields.job_id()
    max_chars = config.PROMPT_MAX_CHARS.read()
    prompt = fields.text("prompt", required=True, max_chars=max_chars)
    # generate() replaces an empty negative prompt with the config's default: "" means the default.
    negative_prompt = (
        fields.text("negative_prompt", default="", allow_empty=True, max_chars=max_chars)
        or DEFAULT_NEGATIVE_PROMPT
    )
    cond_image = resolve("cond_image", fields.text("cond_image", required=True))
    speakers = fields.cond_audio()
    cond_audio = tuple(
        None if ref is None else resolve(f"cond_audio.{name}", ref) for name, ref in speakers.items()
    )
    audio_type = fields.choice("audio_type", AUDIO_TYPES, default="para")
    if len(cond_audio) == 1:
        audio_type = "para"  # one speaker: not used
    bbox = fields.bbox(tuple(speakers))
    mode = fields.choice("mode", MODES, default="clip")
    frames = fields.integer("frames", *FRAMES_RANGE, default=81)
    if (frames - 1) % 4:
        raise JobError(source, "frames", f"must be 4n+1 (5, 9, ..., 81, ...), got {frames}")
    size = fields.size()
    preset = fields.preset()
    given = PRESETS[preset] if preset else None  # the preset's settings replace the defaults
    steps = fields.integer("steps", *STEPS_RANGE, default=given.steps if given else 40)
    shift = fields.number(
        "shift",
        0.0,
        SHIFT_MAX,
        default=given.shift if given else DEFAULT_SHIFT.get(size, WXH_SHIFT),
        low_open=True,
    )
    text_guidance = fields.number(
        "text_guidance", 0.0, GUIDANCE_MAX, default=given.text_guidance if given else 5.0
    )
    audio_guidance = fields.number(
        "audio_guidance", 0.0, GUIDANCE_MAX, default=given.audio_guidance if given else 4.0
    )
    seed = fields.integer("seed", 0, SEED_MAX, default=42)
    color_correction = fields.number("color_correction", 0.0, 1.0, default=1.0)
    apg = fields.apg()
    motion_frames = fields.integer("motion_frames", 1, FRAMES_RANGE[1], default=25)
    if (motion_frames - 1) % 4:
        raise JobError(source, "motion_frames", f"must be 1 mod 4 (1, 5, ..., 25, ...), got {motion_frames}")
    if mode == "streaming" and motion_frames >= frames:
        raise JobError(
            source,
            "motion_frames",
            f"{motion_frames} must be fewer than frames ({frames}): each streaming clip continues "
            "from the last motion_frames of the previous one",
        )
    rerender = fields.boolean("rerender", default=False)
    teacache = fields.teacache()
    job_sha256 = fields.sha256(JOB_SHA256)

    job = RenderJob(
        id=job_id,
        prompt=prompt,
        negative_prompt=negative_prompt,
        cond_image=cond_image,
        cond_audio=cond_audio,
        audio_type=audio_type,
        bbox=bbox,
        mode=mode,
        frames=frames,
        size=size,
        steps=steps,
        shift=shift,
        text_guidance=text_guidance,
        audio_guidance=audio_guidance,
        seed=seed,
        color_correction=color_correction,
        apg=apg,
        motion_frames=motion_frames,
        rerender=rerender,
        source=source,
        job_sha256=job_sha256,
        teacache=teacache,
        preset=preset,
    )
    if check_media:
        from mt_assets.jobs.decode import load_job_media  # decode.py reads RenderJob: imported here

        load_job_media(job)
    return job


# --- field readers ------------------------------------------------------------------------------


class _Fields:
    """Typed reads of one job document; every error names the job, the field and the value."""

    def __init__(self, doc: Mapping[str, Any], source: str, prefix: str = "") -> None:
        self.doc = doc
        self.source = source
        self.prefix = prefix  # 'apg.' for the fields inside apg

    def error(self, field: str | None, message: str) -> JobError:
        return JobError(self.source, None if field is None else self.prefix + field, message)

    def check_names(self) -> None:
        for key in self.doc:
            if not isinstance(key, str):
                raise self.error(None, f"field names must be strings, got {quote(key)}")
            if key in _UNSUPPORTED:
                raise self.error(key, _UNSUPPORTED[key])
            if key not in FIELDS:
                raise self.error(key[:QUOTED_CHARS], f"unknown field{_suggest(key, FIELDS)}")

    def job_id(self) -> str:
        if "id" in self.doc:
            value = self.doc["id"]
            if not isinstance(value, str) or not JOB_ID.fullmatch(value):
                raise self.error("id", f"{quote(value)} must be {JOB_ID_RULE}")
            return value
        stem = Path(self.source).stem
        if not JOB_ID.fullmatch(stem):
            raise self.error(
                "id",
                f"not given, and the job's name {stem!r} is not a valid id ({JOB_ID_RULE}): set id",
            )
        return stem

    def text(
        self,
        field: str,
        *,
        required: bool = False,
        default: str = "",
        allow_empty: bool = False,
        max_chars: int | None = None,
    ) -> str:
        if field not in self.doc:
            if required:
                raise self.error(field, "is required")
            return default
        value = self.doc[field]
        if not isinstance(value, str):
            raise self.error(field, f"must be a string, got {describe_kind(value)} {quote(value)}")
        if max_chars is not None and len(value) > max_chars:
            # T5 reads 512 tokens: a prompt far beyond that is a mistake (or an attack on memory).
            raise self.error(
                field, f"is {len(value):,} characters; the limit is {max_chars:,} (MT_PROMPT_MAX_CHARS)"
            )
        if not allow_empty and not value.strip():
            raise self.error(field, f"must not be empty, got {quote(value)}")
        return value

    def sha256(self, field: str) -> str | None:
        value = self.doc.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            raise self.error(field, f"must be 64 lowercase hex characters, got {quote(value)}")
        return value

    def choice(self, field: str, choices: Sequence[str], *, default: str) -> str:
        value = self.doc.get(field, default)
        if value not in choices:
            raise self.error(
                field, f"{quote(value)} is not one of {', '.join(choices)}{_did_you_mean(value, choices)}"
            )
        return value

    def integer(self, field: str, low: int, high: int, *, default: int) -> int:
        value = self.doc.get(field, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(field, f"must be an integer, got {describe_kind(value)} {quote(value)}")
        if not low <= value <= high:
            raise self.error(field, f"{quote(value)} is out of range {low}..{high}")
        return value

    def number(self, field: str, low: float, high: float, *, default: float, low_open: bool = False) -> float:
        value = self.doc.get(field, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(field, f"must be a number, got {describe_kind(value)} {quote(value)}")
        if value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise self.error(
                field, f"{quote(value)} is out of range {bracket}{format_number(low)}, {format_number(high)}]"
            )
        return float(value)

    def boolean(self, field: str, *, default: bool) -> bool:
        value = self.doc.get(field, default)
        if not isinstance(value, bool):
            raise self.error(field, f"must be true or false, got {describe_kind(value)} {quote(value)}")
        return value

    def size(self) -> str:
        value = self.doc.get("size", SIZE_BUCKETS[0])
        if not isinstance(value, str):
            raise self.error(
                "size", f"must be a string (multitalk-480, multitalk-720 or WxH), got {quote(value)}"
            )
        if value in SIZE_BUCKETS:
            return value
        match = _WXH.fullmatch(value)
        if not match:
            raise self.error(
                "size",
                f"{quote(value)} is not multitalk-480, multitalk-720 or WxH (e.g. 832x480)"
                + _did_you_mean(value, SIZE_BUCKETS),
            )
        for side, name in ((int(match[1]), "width"), (int(match[2]), "height")):
            if side % 16 or not SIDE_RANGE[0] <= side <= SIDE_RANGE[1]:
                raise self.error(
                    "size",
                    f"{quote(value)}: {name} {side} must be a multiple of 16 in {SIDE_RANGE[0]}..{SIDE_RANGE[1]}",
                )
        return value

    def cond_audio(self) -> dict[str, str | None]:
        if "cond_audio" not in self.doc:
            raise self.error("cond_audio", "is required: {person1: <audio>} or {person1: ..., person2: ...}")
        value = self.doc["cond_audio"]
        if not isinstance(value, Mapping):
            raise self.error(
                "cond_audio",
                f"must be a mapping {{person1: <audio>[, person2: <audio>]}}, got {quote(value)}",
            )
        for key in value:
            if key not in SPEAKERS:
                raise self.error(f"cond_audio.{key}", f"unknown speaker{_suggest(str(key), SPEAKERS)}")
        if "person1" not in value:
            raise self.error("cond_audio", f"person1 is required, got {quote(dict(value))}")
        speakers: dict[str, str | None] = {}
        for name in SPEAKERS:
            if name not in value:
                continue
            ref = value[name]
            if ref is None or ref == _SILENT:
                speakers[name] = None
            elif isinstance(ref, str) and ref.strip():
                speakers[name] = ref
            else:
                raise self.error(
                    f"cond_audio.{name}", f"must be a path or URI, got {describe_kind(ref)} {quote(ref)}"
                )
        if all(ref is None for ref in speakers.values()):
            raise self.error(
                "cond_audio",
                f"{quote(dict(value))}: no speaker has audio (a silent speaker needs a second one who speaks)",
            )
        return speakers

    def bbox(self, speakers: tuple[str, ...]) -> tuple[tuple[float, float, float, float], ...] | None:
        value = self.doc.get("bbox")
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.error(
                "bbox",
                f"must be a mapping {{person1: [x_min, y_min, x_max, y_max], ...}}, got {quote(value)}",
            )
        for key in value:
            if key not in SPEAKERS:
                raise self.error(f"bbox.{key}", f"unknown speaker{_suggest(str(key), SPEAKERS)}")
        if set(value) != set(speakers):
            raise self.error(
                "bbox",
                f"has {_names(value)} but cond_audio has {_names(speakers)}: give a box for each speaker "
                "of cond_audio, or none",
            )
        boxes = []
        for name in speakers:
            box = value[name]
            shown = f"{quote(box)}"
            if (
                not isinstance(box, Sequence)
                or isinstance(box, str)
                or len(box) != 4
                or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box
                )
            ):
                raise self.error(
                    f"bbox.{name}", f"must be 4 numbers [x_min, y_min, x_max, y_max], got {shown}"
                )
            x_min, y_min, x_max, y_max = (float(v) for v in box)
            if min(x_min, y_min) < 0:
                raise self.error(f"bbox.{name}", f"{shown}: coordinates must not be negative")
            if x_max <= x_min or y_max <= y_min:
                raise self.error(
                    f"bbox.{name}",
                    f"{shown}: needs x_min < x_max and y_min < y_max ([x_min, y_min, x_max, y_max], "
                    "x counting rows and y columns, as in the reference)",
                )
            boxes.append((x_min, y_min, x_max, y_max))
        return tuple(boxes)

    def apg(self) -> Apg | None:
        value = self.doc.get("apg", False)
        if value is False:
            return None
        if value is True:
            return Apg(APG_MOMENTUM, APG_NORM_THRESHOLD)
        if not isinstance(value, Mapping):
            raise self.error(
                "apg", f"must be true, false or {{momentum, norm_threshold}}, got {quote(value)}"
            )
        for key in value:
            if key not in _APG_FIELDS:
                raise self.error(f"apg.{key}", f"unknown field{_suggest(str(key), _APG_FIELDS)}")
        sub = _Fields(value, self.source, prefix="apg.")
        momentum = sub.number("momentum", -1.0, 1.0, default=APG_MOMENTUM)
        threshold = sub.number(
            "norm_threshold", 0.0, APG_NORM_THRESHOLD_MAX, default=APG_NORM_THRESHOLD, low_open=True
        )
        return Apg(momentum, threshold)

    def preset(self) -> str | None:
        value = self.doc.get("preset")
        if value is None:
            return None
        if not isinstance(value, str) or value not in PRESETS:
            raise self.error(
                "preset",
                f"{quote(value)} is not one of {', '.join(PRESETS)}{_did_you_mean(value, tuple(PRESETS))}",
            )
        return value

    def teacache(self) -> TeaCacheSettings | None:
        value = self.doc.get("teacache", False)
        if value is False:
            return None
        if value is True:
            return TeaCacheSettings(TEACACHE_THRESHOLD)
        if not isinstance(value, Mapping):
            raise self.error("teacache", f"must be true, false or {{threshold}}, got {quote(value)}")
        for key in value:
            if key not in _TEACACHE_FIELDS:
                raise self.error(f"teacache.{key}", f"unknown field{_suggest(str(key), _TEACACHE_FIELDS)}")
        sub = _Fields(value, self.source, prefix="teacache.")
        threshold = sub.number(
            "threshold", 0.0, TEACACHE_THRESHOLD_MAX, default=TEACACHE_THRESHOLD, low_open=True
        )
        return TeaCacheSettings(threshold)


def check_preset_served(job: RenderJob, profile: str, presets: Collection[str]) -> None:
    """JobError (field 'preset') when the job's preset is not one `profile` serves (its manifest's `presets`).

    The message names the preset, the profile and the shipped profiles that serve the preset: a
    preset's settings without its LoRA merged into the DiT would render at 4 or 8 steps with weights
    made for 40.
    """
    if job.preset is None or job.preset in presets:
        return
    from mt_assets.manifest import profiles_serving  # reads the shipped profiles (YAML, no torch)

    serving = profiles_serving(job.preset)
    where = f"profile {', '.join(serving)}" if serving else "no shipped profile"
    raise JobError(
        job.source,
        "preset",
        f"{job.preset!r} is not served by profile {profile!r} (it serves: {', '.join(presets) or 'no preset'}); "
        f"{where} serves it: render with that profile, or leave preset out",
    )


def _suggest(value: object, choices: Sequence[str]) -> str:
    return _did_you_mean(value, choices) or f"; expected one of {', '.join(choices)}"


def _did_you_mean(value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or len(value) > QUOTED_CHARS:
        return ""  # nothing that long is a typo of a field or choice name
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def quote(value: object) -> str:
    """repr(value), at most QUOTED_CHARS characters of it: messages stay small whatever a job holds."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * QUOTED_CHARS:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits>"
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # an integer too long to convert, nested deeper than Python goes
        return f"<{describe_kind(value)}>"
    return text if len(text) <= QUOTED_CHARS else text[: QUOTED_CHARS - 3] + "..."


def describe_kind(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _names(keys: object) -> str:
    names = [str(k) for k in keys]  # type: ignore[attr-defined]
    return " and ".join(names) if names else "no speaker"


def format_number(value: float) -> str:
    return f"{value:g}"
