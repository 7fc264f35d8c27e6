"""A render job's media: where a reference points, and how the image and the audio decode.

A media reference in a job is one of:

    photo.png                 relative to the job file's folder (`base_dir`)
    /data/in/photo.png        absolute: allowed only inside an allowed root
    volume:media/photo.png    under the volume root, wherever it is mounted (/workspace on a pod,
                              /runpod-volume on a serverless worker), so one job runs on both
    s3://bucket/key           fetched with boto3 when decoded (AWS_ACCESS_KEY_ID,
                              AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_S3 /
                              AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION) into a temporary
                              file, at most MAX_DOWNLOAD_BYTES

and, for the RunPod worker only (`fetch_remote`, which writes the bytes to a local file before the
job is checked, so that a job's record never holds a URL's signature or megabytes of base64):

    https://host/path?query   fetched with urllib: at most `max_bytes` (Content-Length is checked
                              first, the body is counted while it streams), within `timeout`
                              seconds in all, redirects followed only to https; TLS verified.
                              http:// is refused (the bytes and any signature would travel in
                              clear), and so is user:password@ in the URL
    data:<mime>;base64,<data> RFC 2397, base64 only; the whole URI at most MAX_DATA_URI_CHARS
                              characters (RunPod's request payload limit: 10 MB for /run, 20 MB
                              for /runsync)

`resolve_media` refuses both with a message saying so. A URL's query string (a presigned URL's
signature) and a data: URI's payload are never shown: `shown_ref` is what messages print.

Local references are confined: the path is resolved first (symlinks followed, `..` collapsed) and
must then lie inside one of the allowed roots: the job folder, the volume root and any
`allowed_roots`; a `volume:` reference must lie inside the volume root. So `../../etc/passwd`, an
absolute path elsewhere and a symlink in the job folder that leads out are all refused.

Decoding:

    load_image   PNG, JPEG or WebP; the EXIF orientation is applied (a phone photo comes out upright,
                 which the reference's plain Image.open does not do); RGB (alpha is dropped)
    load_audio   mono float32 at 16 kHz. WAV/FLAC/MP3/OGG through libsndfile (`read_sound_file`: a
                 16-bit PCM file gives int16 / 32768, as librosa.load does); M4A/AAC and the audio
                 track of MP4/MOV/MKV/WebM through PyAV (FFmpeg). Channels are averaged and other
                 rates resampled exactly as `load_waveform` does for either.

Limits, so that a small file cannot ask for gigabytes (a 2 MB FLAC can hold 10 hours of silence, a
140 KB PNG 12000x12000 pixels, a WAV can say 1 Hz and be resampled 16000-fold). Each is checked from
the header, before a sample or pixel is decoded; a refusal is a MediaLimitError naming the limit:

    image  at most MT_IMAGE_MAX_PIXELS pixels (50 million); Pillow's own decompression-bomb error
           (over 2 x PIL.Image.MAX_IMAGE_PIXELS, raised while the header is read) is reported the same way
    audio  at most MT_AUDIO_MAX_SECONDS (600 s) per speaker; a sample rate of at least
           MT_AUDIO_MIN_SAMPLE_RATE (8000 Hz) and at most MAX_SAMPLE_RATE; at most MAX_CHANNELS channels.
           Decoding goes block by block, mixed down to mono as it comes, and stops once it is past
           the duration limit, whatever the header said: a container's duration may lie, and a raw
           stream's (ADTS AAC, MP3) is FFmpeg's guess from the bitrate, so it is not used to refuse.
           Memory is then the mono samples, at most MT_AUDIO_MAX_SECONDS at the file's own rate, as
           float32 and as float64 while resampling (measured at 600 s: 0.43 GB at 48 kHz, 1.46 GB
           at 192 kHz, over the ~130 MB the process starts with).

A MemoryError while decoding becomes a MediaError too: no traceback reaches the user.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import math
import mimetypes
import re
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import av
import numpy as np
import PIL.Image
import PIL.ImageOps
from botocore.exceptions import BotoCoreError, ClientError

from mt_assets import config
from mt_assets.sources.base import SourceError
from mt_assets.sources.s3 import parse_s3_uri
from mt_assets.waveform import SAMPLE_RATE, AudioError, AudioTooLong, load_waveform, read_sound_file, to_mono

VOLUME_PREFIX = "volume:"
S3_PREFIX = "s3://"
HTTPS_PREFIX = "https://"
DATA_PREFIX = "data:"
MAX_DOWNLOAD_BYTES = 2 * 1024**3  # a long talking-head mp4 whose audio track is wanted stays under this
MAX_DATA_URI_CHARS = 20 * 1024**2  # RunPod's largest request payload (/runsync); /run takes 10 MB
HTTPS_TIMEOUT = 300.0  # seconds for a whole https fetch
HTTPS_SOCKET_TIMEOUT = 30.0  # seconds any one connect or read may wait
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# Containers libsndfile cannot read: go straight to PyAV (anything else tries libsndfile first).
_AV_SUFFIXES = {".m4a", ".aac", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".3gp"}
_READ_BLOCK = 1024 * 1024
MAX_SAMPLE_RATE = 192_000  # Hz: the highest studio rate; each allowed second costs memory at this rate
MAX_CHANNELS = 8  # 7.1 at most: speech needs one
# Samples a codec may add to what its container says (AAC priming and padding: 1024-2048).
_CODEC_SLACK_FRAMES = 8192
# FFmpeg formats whose duration is written in the file (an index, a sample count, a size). For the
# others, raw streams above all (ADTS AAC, MP3, AC-3), FFmpeg guesses the duration from the bitrate
# (a file that starts silent is guessed many times too long), so only decoded samples count there.
_DURATION_WRITTEN = frozenset(
    ["mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "ogg", "flac", "wav", "w64"]
)


class MediaError(ValueError):
    """A media reference that cannot be used: the message names the reference and what is wrong."""


class MediaLimitError(MediaError):
    """Media refused for what decoding it would cost (too long, too many pixels, ...); the message
    names the limit and the variable that sets it. No other decoder is tried."""


@dataclass(frozen=True)
class AudioLimits:
    """What one speaker's audio may be: checked from the header, and the duration again while decoding."""

    max_seconds: float = config.AUDIO_MAX_SECONDS.default
    min_rate: int = config.AUDIO_MIN_SAMPLE_RATE.default
    max_rate: int = MAX_SAMPLE_RATE
    max_channels: int = MAX_CHANNELS

    @classmethod
    def from_env(cls, env: config.Env | None = None) -> AudioLimits:
        """MT_AUDIO_MAX_SECONDS and MT_AUDIO_MIN_SAMPLE_RATE (ConfigError if either is malformed)."""
        return cls(
            max_seconds=config.AUDIO_MAX_SECONDS.read(env), min_rate=config.AUDIO_MIN_SAMPLE_RATE.read(env)
        )

    def check_header(self, ref: str, rate: int | None, channels: int | None, seconds: float | None) -> None:
        """Raise MediaLimitError for what the header says (None: it does not say)."""
        if rate:
            self.check_rate(ref, rate)
        if channels and channels > self.max_channels:
            raise MediaLimitError(f"{ref} has {channels} channels; at most {self.max_channels} are taken")
        if seconds is not None and seconds > self.max_seconds:
            raise MediaLimitError(
                f"{ref} is {seconds:.1f} s long; the limit is {self.max_seconds:g} s per speaker "
                f"({config.AUDIO_MAX_SECONDS.name})"
            )

    def check_rate(self, ref: str, rate: int) -> None:
        if rate < self.min_rate:
            raise MediaLimitError(
                f"{ref} is sampled at {rate} Hz; the lowest rate taken is {self.min_rate} Hz "
                f"({config.AUDIO_MIN_SAMPLE_RATE.name})"
            )
        if rate > self.max_rate:
            raise MediaLimitError(
                f"{ref} is sampled at {rate} Hz; the highest rate taken is {self.max_rate} Hz"
            )

    def too_long(self, ref: str, header_seconds: float | None) -> MediaLimitError:
        """The refusal of a file found longer than the limit while decoding."""
        said = "nothing about its length" if header_seconds is None else f"{header_seconds:.1f} s"
        return MediaLimitError(
            f"{ref}: more than {self.max_seconds:g} s of audio decoded (its header says {said}); the "
            f"limit is {self.max_seconds:g} s per speaker ({config.AUDIO_MAX_SECONDS.name})"
        )


# --- where a reference points -------------------------------------------------------------------


def resolve_media(
    ref: str, *, base_dir: Path, volume_root: Path | None, allowed_roots: Sequence[Path] = ()
) -> str:
    """The absolute local path of `ref` (symlinks resolved), or an s3:// URI unchanged.

    Raises MediaError for an empty reference, a malformed s3:// URI, a `volume:` reference without
    a volume root or leading out of it, and a path that resolves outside every allowed root.
    Existence is not checked here: `load_image` / `load_audio` report a missing file.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise MediaError(f"{ref!r} is not a media reference (a path, volume:<path> or s3://bucket/key)")
    if "\x00" in ref:
        raise MediaError(f"{shown_ref(ref)!r} contains a NUL character")
    if is_remote(ref):
        raise MediaError(
            f"{shown_ref(ref)!r}: https URLs and data: URIs are taken by the RunPod worker only (it "
            "fetches them first); give a path, volume:<path> or s3://bucket/key"
        )
    if ref.startswith(S3_PREFIX):
        parse_s3_ref(ref)
        return ref
    if ref.startswith(VOLUME_PREFIX):
        inner = ref[len(VOLUME_PREFIX) :]
        if volume_root is None:
            raise MediaError(f"{ref!r}: no volume root is configured here (--volume or MT_VOLUME)")
        if not inner or PurePosixPath(inner).is_absolute():
            raise MediaError(f"{ref!r}: expected volume:<path relative to the volume root>")
        root = Path(volume_root).resolve()
        path = (root / inner).resolve()
        if not path.is_relative_to(root):
            raise MediaError(f"{ref!r} leads to {path}, outside the volume root {root}")
        return str(path)

    roots = [Path(base_dir).resolve()]
    if volume_root is not None:
        roots.append(Path(volume_root).resolve())
    roots.extend(Path(r).resolve() for r in allowed_roots)
    given = Path(ref)  # no '~' expansion: a job means the same on every machine
    path = (given if given.is_absolute() else Path(base_dir) / given).resolve()
    if not any(path.is_relative_to(root) for root in roots):
        shown = ", ".join(dict.fromkeys(str(r) for r in roots))
        via = "" if str(path) == ref else f" (it resolves to {path})"
        raise MediaError(f"{ref!r} is outside the allowed roots{via}; allowed: {shown}")
    return str(path)


def parse_s3_ref(ref: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`. Raises MediaError naming what is wrong."""
    if "?" in ref or "#" in ref:  # parse_s3_uri refuses them too, but its message would show them
        raise MediaError(
            f"{shown_ref(ref)!r}: an s3:// URI has no query string or fragment (a presigned URL is an "
            "https:// URL; s3:// objects are read with the AWS_* credentials)"
        )
    try:
        bucket, key = parse_s3_uri(ref)
    except SourceError as e:
        raise MediaError(str(e).removeprefix("source ")) from None
    if not key:
        raise MediaError(f"{ref!r}: expected s3://bucket/key, with a key")
    return bucket, key


# --- https URLs and data: URIs (the RunPod worker) -----------------------------------------------

_DATA_URI = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*?)(?P<base64>;base64)?,", re.IGNORECASE)
_REMOTE_PREFIXES = (HTTPS_PREFIX, "http://", DATA_PREFIX)
_LOOPBACK_HOSTS = ("localhost",)


def is_remote(ref: str) -> bool:
    """True for an https:// or http:// URL or a data: URI (schemes are case-insensitive)."""
    return isinstance(ref, str) and ref[:8].lower().startswith(_REMOTE_PREFIXES)


_URL_LIKE = re.compile(r"(?i)^[a-z][a-z0-9+.-]*://")


def shown_ref(ref: str) -> str:
    """`ref` as messages and logs may show it: the one way a reference (a media reference, a URL,
    an s3:// URI, MT_OUTPUT_S3, an endpoint) is shown to anyone.

    Of any URL (scheme://...: https, http, s3, ...) the query string (a presigned URL's signature
    lives there) is replaced by '?…', a fragment dropped and user:password@ replaced by '***@'; a
    data: URI is cut to its media type and length. Anything else (paths, volume:) is shown as it is.
    """
    if not isinstance(ref, str):
        return repr(ref)
    if ref[:5].lower() == DATA_PREFIX:
        head = ref.split(",", 1)[0][:80]
        return f"{head},… ({len(ref)} characters)"
    if not _URL_LIKE.match(ref):
        return ref
    # By hand rather than urlsplit/urlunsplit, so that what is left is shown exactly as given.
    scheme, rest = ref.split("://", 1)
    cut = re.search(r"[?#]", rest)
    query = cut is not None and cut.group() == "?"
    authority, slash, path = (rest[: cut.start()] if cut else rest).partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}{'?…' if query else ''}"


def remote_suffix(ref: str) -> str:
    """The file suffix a fetched reference's bytes should carry (from the URL's path or the data:
    URI's media type), so that decoders pick the right route; '' when unknown."""
    if ref[:8].lower().startswith(DATA_PREFIX):
        match = _DATA_URI.match(ref)
        mime = (match["mime"] if match else "").strip().lower()
        return _MIME_SUFFIXES.get(mime) or mimetypes.guess_extension(mime) or ""
    try:
        suffix = PurePosixPath(unquote(urlsplit(ref).path)).suffix.lower()
    except ValueError:
        return ""
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""


# Media types whose usual suffix mimetypes does not know or spells oddly.
_MIME_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/x-wav": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/ogg": ".ogg",
    "audio/mp4": ".m4a",
    "audio/m4a": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
}


def fetch_remote(
    ref: str,
    dest: Path,
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = HTTPS_TIMEOUT,
) -> int:
    """Write the bytes of an https URL or a data: URI to `dest`; returns their size.

    Raises MediaError (naming `shown_ref(ref)`, never the query or payload) for http://, a URL
    with credentials, a malformed data: URI, anything over `max_bytes` (or a data: URI over
    MAX_DATA_URI_CHARS), a fetch that takes longer than `timeout` seconds, and any HTTP or
    network failure.
    """
    if ref[:8].lower().startswith(DATA_PREFIX):
        return write_data_uri(ref, dest, max_bytes=max_bytes)
    return download_https(ref, dest, max_bytes=max_bytes, timeout=timeout)


def write_data_uri(ref: str, dest: Path, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> int:
    """Decode `data:<mime>;base64,<data>` into `dest`; returns the number of bytes written."""
    shown = shown_ref(ref)
    if len(ref) > MAX_DATA_URI_CHARS:
        raise MediaError(
            f"{shown}: a data: URI of {len(ref)} characters is over the {MAX_DATA_URI_CHARS} allowed "
            "(RunPod's request payload limit: 10 MB for /run, 20 MB for /runsync); put the file in S3 "
            "or on the volume and give s3://bucket/key or volume:<path>"
        )
    match = _DATA_URI.match(ref)
    if match is None:
        raise MediaError(f"{shown}: expected data:<mime type>;base64,<data>")
    if not match["base64"]:
        raise MediaError(f"{shown}: only base64 data: URIs are taken (data:<mime type>;base64,<data>)")
    payload = "".join(ref[match.end() :].split())  # base64 wrapped over lines is still base64
    if len(payload) // 4 * 3 > max_bytes + 2:
        raise MediaError(f"{shown}: more than the {max_bytes} bytes allowed")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaError(f"{shown}: the data is not valid base64 ({e})") from None
    if not data:
        raise MediaError(f"{shown}: the data is empty")
    if len(data) > max_bytes:
        raise MediaError(f"{shown}: {len(data)} bytes, more than the {max_bytes} allowed")
    Path(dest).write_bytes(data)
    return len(data)


def download_https(
    url: str,
    dest: Path,
    *,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    timeout: float = HTTPS_TIMEOUT,
    allow_loopback_http: bool = False,
) -> int:
    """Fetch `url` (https only) into `dest` within `timeout` seconds; returns its size in bytes.

    `allow_loopback_http` lets tests use a plain-http server on 127.0.0.1; nothing else passes it,
    so production fetches are https-only, redirects included.
    """
    shown = shown_ref(url)
    _check_url(url, shown, allow_loopback_http)
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_SafeRedirects(allow_loopback_http))
    request = urllib.request.Request(url, headers={"User-Agent": "mt-assets", "Accept-Encoding": "identity"})
    written = 0
    try:
        with opener.open(request, timeout=min(timeout, HTTPS_SOCKET_TIMEOUT)) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise MediaError(f"{shown}: {int(length)} bytes, more than the {max_bytes} allowed")
            with open(dest, "wb") as out:
                # read1: at most one socket read per call, so the deadline is checked as bytes trickle in
                while block := response.read1(_READ_BLOCK):
                    written += len(block)
                    if written > max_bytes:
                        raise MediaError(f"{shown}: more than the {max_bytes} bytes allowed")
                    out.write(block)
                    if time.monotonic() > deadline:
                        raise MediaError(f"{shown}: not fetched within {timeout:g} s ({written} bytes in)")
    except urllib.error.HTTPError as e:
        e.close()
        raise MediaError(f"{shown}: HTTP {e.code} ({e.reason})") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            raise MediaError(
                f"{shown}: timed out (no answer within {min(timeout, HTTPS_SOCKET_TIMEOUT):g} s)"
            ) from None
        raise MediaError(
            f"{shown}: cannot be fetched: {_first_line(reason) if isinstance(reason, BaseException) else reason}"
        ) from None
    except TimeoutError:
        raise MediaError(
            f"{shown}: timed out (no byte for {min(timeout, HTTPS_SOCKET_TIMEOUT):g} s, {written} bytes in)"
        ) from None
    except (HTTPException, OSError) as e:
        raise MediaError(f"{shown}: cannot be fetched: {type(e).__name__}: {_first_line(e)}") from None
    if written == 0:
        raise MediaError(f"{shown}: the response is empty")
    return written


def _check_url(url: str, shown: str, allow_loopback_http: bool) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as e:
        raise MediaError(f"{shown}: not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_loopback_http and _is_loopback(host)):
        raise MediaError(
            f"{shown}: only https URLs are fetched (an http URL's bytes, and any signature in it, "
            "would travel unencrypted)"
        )
    if "@" in parts.netloc:
        raise MediaError(f"{shown}: credentials do not belong in the URL; use a presigned URL or s3://")
    if not host:
        raise MediaError(f"{shown}: the URL has no host")


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs the first one would have been allowed to be (https)."""

    def __init__(self, allow_loopback_http: bool) -> None:
        super().__init__()
        self.allow_loopback_http = allow_loopback_http

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        _check_url(
            newurl, f"{shown_ref(req.full_url)} redirected to {shown_ref(newurl)}", self.allow_loopback_http
        )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# --- decoding -----------------------------------------------------------------------------------


def load_image(
    ref: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, max_pixels: int | None = None
) -> PIL.Image.Image:
    """The image at `ref` (a resolved path or s3:// URI): EXIF orientation applied, RGB.

    Raises MediaLimitError for an image of more than `max_pixels` pixels (None: MT_IMAGE_MAX_PIXELS),
    read from the header before anything is decoded; MediaError if it is missing, not a PNG/JPEG/WebP,
    or cannot be decoded.
    """
    if max_pixels is None:
        max_pixels = _configured(config.IMAGE_MAX_PIXELS, "image", ref)
    with _local(ref, "image", max_bytes) as path:
        try:
            with warnings.catch_warnings():
                # Pillow warns on stderr past PIL.Image.MAX_IMAGE_PIXELS (89 million); our own limit,
                # checked next with the size in hand, is the one that stands.
                warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
                opened = PIL.Image.open(path, formats=IMAGE_FORMATS)  # the header only, not the pixels
            with opened as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise MediaLimitError(
                        f"{ref} is {width}x{height} ({width * height / 1e6:.1f} megapixels); the limit is "
                        f"{max_pixels / 1e6:.1f} megapixels ({config.IMAGE_MAX_PIXELS.name})"
                    )
                image.load()
                upright = PIL.ImageOps.exif_transpose(image)
                return upright.convert("RGB")
        except PIL.UnidentifiedImageError:
            raise MediaError(f"image {ref}: not a PNG, JPEG or WebP image") from None
        except PIL.Image.DecompressionBombError as e:
            raise _pillow_bomb(ref, e, max_pixels) from None
        except MemoryError:
            raise MediaError(f"image {ref}: not enough memory to decode it") from None
        except (OSError, ValueError, SyntaxError) as e:
            if isinstance(e, MediaError):
                raise
            raise MediaError(f"image {ref}: cannot be decoded: {_first_line(e)}") from None


def _pillow_bomb(ref: str, error: Exception, max_pixels: int) -> MediaLimitError:
    """Pillow's refusal while reading the header (over 2 x PIL.Image.MAX_IMAGE_PIXELS), said as ours."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found[1]) if found else None
    if pixels is not None and pixels > max_pixels:
        return MediaLimitError(
            f"{ref} has {pixels / 1e6:.1f} megapixels; the limit is {max_pixels / 1e6:.1f} megapixels "
            f"({config.IMAGE_MAX_PIXELS.name})"
        )
    return MediaLimitError(
        f"{ref}: Pillow refuses it as a decompression bomb ({_first_line(error)}); "
        f"{config.IMAGE_MAX_PIXELS.name} does not lift Pillow's own limit"
    )


def load_audio(
    ref: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES, limits: AudioLimits | None = None
) -> np.ndarray:
    """Mono float32 samples at 16 kHz from `ref` (a resolved path or s3:// URI).

    Raises MediaLimitError for audio over `limits` (None: AudioLimits.from_env()): too long, a sample
    rate too low or too high, too many channels; from the header before decoding, and the duration
    again while decoding. MediaError if it is missing, has no audio track, or cannot be decoded.
    """
    if limits is None:
        try:
            limits = AudioLimits.from_env()
        except config.ConfigError as e:
            raise MediaError(f"audio {ref}: {e}") from None
    with _local(ref, "audio", max_bytes) as path:
        try:
            if path.suffix.lower() in _AV_SUFFIXES:
                return _decode_with_av(path, ref, limits)
            try:
                return _decode_with_sndfile(path, ref, limits)
            except MediaLimitError:
                raise
            except AudioError as sndfile_error:
                # Not something libsndfile reads (an .mp3 without a frame sync, an .ogg with opus, a
                # FLAC that does not give its length, ...): FFmpeg decodes more. Report both reasons
                # if neither can.
                try:
                    return _decode_with_av(path, ref, limits)
                except MediaLimitError:
                    raise
                except MediaError as av_error:
                    if "no audio track" in str(av_error):
                        raise
                    raise MediaError(
                        f"audio {ref}: cannot be decoded (libsndfile: {_after_colon(sndfile_error)}; "
                        f"FFmpeg: {_after_colon(av_error)})"
                    ) from None
        except MemoryError:
            raise MediaError(
                f"audio {ref}: not enough memory to decode it (the limit is {limits.max_seconds:g} s per "
                f"speaker, {config.AUDIO_MAX_SECONDS.name})"
            ) from None


def _decode_with_sndfile(path: Path, ref: str, limits: AudioLimits) -> np.ndarray:
    """libsndfile's decode: the header checked first, then read block by block up to the limit."""

    def check(rate: int, channels: int, seconds: float | None) -> None:
        limits.check_header(ref, rate, channels, seconds)

    try:
        wave, rate = read_sound_file(path, max_seconds=limits.max_seconds, header=check)
    except AudioTooLong as e:
        raise limits.too_long(ref, e.header_seconds) from None
    if len(wave) == 0:
        raise AudioError(f"audio {ref}: has no samples")
    return load_waveform(wave, SAMPLE_RATE, source_sr=rate)


def _decode_with_av(path: Path, ref: str, limits: AudioLimits) -> np.ndarray:
    """The first audio track of a container, decoded with FFmpeg, then mono + 16 kHz as load_waveform does.

    The header (rate, channels, duration where the format writes one) is checked before decoding;
    then frames are mixed down as they come and decoding stops past the duration limit."""
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
                raise MediaError(f"audio {ref}: has no audio track ({kinds})")
            stream = container.streams.audio[0]
            said = _written_seconds(container, stream)
            limits.check_header(ref, stream.rate, stream.channels, said)
            # Planar float at the stream's own rate and layout: one row per channel.
            resampler = av.AudioResampler(format="fltp")
            parts: list[np.ndarray] = []
            rate = stream.rate
            decoded, most = 0, None
            for out in _resampled(container.decode(stream), resampler):
                if most is None:  # the rate of the first frame is every frame's (the resampler's)
                    rate = out.sample_rate
                    limits.check_rate(ref, rate)
                    most = math.ceil(limits.max_seconds * rate) + _CODEC_SLACK_FRAMES
                decoded += out.samples
                if decoded > most:
                    raise limits.too_long(ref, said)
                # [channels, samples] -> [samples, channels], mixed down row by row as load_waveform does
                parts.append(to_mono(np.ascontiguousarray(out.to_ndarray().T)))
    except av.error.FFmpegError as e:
        raise MediaError(f"audio {ref}: cannot be decoded: {_first_line(e)}") from None
    if decoded == 0:
        raise MediaError(f"audio {ref}: the audio track has no samples")
    wave = np.concatenate(parts)
    del parts
    try:
        return load_waveform(wave, SAMPLE_RATE, source_sr=int(rate))
    except AudioError as e:
        raise MediaError(f"audio {ref}: {e}") from None


def _resampled(frames: Iterator[av.AudioFrame], resampler: av.AudioResampler) -> Iterator[av.AudioFrame]:
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def _written_seconds(container: Any, stream: Any) -> float | None:
    """The duration a container writes down for `stream`, in seconds; None where FFmpeg would guess it."""
    if not set(container.format.name.split(",")) & _DURATION_WRITTEN:
        return None
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _configured(variable: config.Variable[int], what: str, ref: str) -> int:
    try:
        return variable.read()
    except config.ConfigError as e:
        raise MediaError(f"{what} {ref}: {e}") from None


@contextlib.contextmanager
def _local(ref: str, what: str, max_bytes: int) -> Iterator[Path]:
    """A local path holding `ref`'s bytes: the file itself, or an s3:// object in a temporary file."""
    if not ref.startswith(S3_PREFIX):
        path = Path(ref)
        if not path.exists():
            raise MediaError(f"{what} {ref}: no such file")
        if not path.is_file():
            raise MediaError(f"{what} {ref}: not a regular file")
        yield path
        return
    suffix = PurePosixPath(ref).suffix[:16]
    with tempfile.TemporaryDirectory(prefix="mt-media-") as folder:
        path = Path(folder) / f"media{suffix}"
        download_s3(ref, path, max_bytes=max_bytes)
        yield path


def download_s3(ref: str, dest: Path, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> int:
    """Write the object `ref` (s3://bucket/key) to `dest`; returns its size in bytes.

    Credentials, endpoint and region come from the usual AWS_* variables (boto3's chain); with a
    custom endpoint path-style addressing is used, as MinIO and RunPod's S3 API expect. Raises
    MediaError for a missing object or bucket, an object over `max_bytes`, and any S3 failure;
    messages never include credentials.
    """
    bucket, key = parse_s3_ref(ref)
    s3 = config.s3_client()
    client = s3.client
    where = f"{ref} (endpoint {endpoint_shown(s3.endpoint)})"
    try:
        try:
            head = client.head_object(Bucket=bucket, Key=key)
            size = int(head["ContentLength"])
            if size > max_bytes:
                raise MediaError(f"{where}: the object is {size} bytes, more than the {max_bytes} allowed")
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            written = 0
            with open(dest, "wb") as out:
                # Counted while streaming too: the object may change between HEAD and GET.
                while block := body.read(_READ_BLOCK):
                    written += len(block)
                    if written > max_bytes:
                        raise MediaError(f"{where}: more than the {max_bytes} bytes allowed")
                    out.write(block)
            return written
        except ClientError as e:
            error = e.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in ("NoSuchKey", "NotFound", "404"):
                # A HEAD's 404 has no body, so it does not say whether the key or the bucket is missing.
                if not _bucket_exists(client, bucket):
                    raise MediaError(f"{where}: no such bucket {bucket!r}") from None
                raise MediaError(f"{where}: no such object") from None
            if code == "NoSuchBucket":
                raise MediaError(f"{where}: no such bucket {bucket!r}") from None
            if (
                code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch")
                or status == 403
            ):
                raise MediaError(
                    f"{where}: access denied ({code}): check that AWS_ACCESS_KEY_ID and "
                    f"AWS_SECRET_ACCESS_KEY belong to a key that may read bucket {bucket!r}"
                ) from None
            raise MediaError(f"{where}: HTTP {status} ({code or 'no error code'})") from None
        except (BotoCoreError, OSError) as e:
            # botocore's messages name the endpoint and the operation, never the secret key.
            raise MediaError(f"{where}: {type(e).__name__}: {_first_line(e)}") from None
    finally:
        client.close()


def _bucket_exists(client: object, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    except ClientError as e:
        return str(e.response.get("Error", {}).get("Code")) not in ("404", "NoSuchBucket", "NotFound")
    return True


def endpoint_shown(endpoint: str | None) -> str:
    """An endpoint URL as messages may show it (`shown_ref`: no user:secret@, no query)."""
    return shown_ref(endpoint) if endpoint else "AWS default"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _after_colon(e: BaseException) -> str:
    """The reason part of 'audio X: reason' (so a combined message does not repeat the file)."""
    text = _first_line(e)
    return text.split(": ", 1)[1] if ": " in text else text
