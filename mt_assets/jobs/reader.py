"""The one reader of job files: a .yaml/.yml/.json file, or a folder holding one as job.yaml/.yml/.json.

The CLI (`mt-assets render`, `jobs submit`), the inbox scan and `JobQueue.load` all read through
here, so a job file means the same thing, and fails with the same message, wherever it is given.
A folder's media are relative to the folder; a file's to the file's folder. The document is then
validated by `schema.parse_job`.

A job file is untrusted input (the inbox is a folder several people and services write to), so:

    size       at most MT_JOB_MAX_BYTES (1 MiB), checked on the open file before it is read
    links      never read through a symlink (O_NOFOLLOW): not the entry, not a job.yaml inside a folder
    YAML       plain documents only: an alias (`*name`) is refused before anything is built from it,
               so a few hundred bytes cannot expand into gigabytes
    failures   anything the parsers raise (a 5,000-digit integer, 20,000-deep nesting, bad UTF-8, no
               memory) is a JobError naming the file; messages never quote the file's contents
    job_sha256 the sha256 of the bytes read, recorded in the job (a value given in the file is replaced)
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from mt_assets import config
from mt_assets.jobs.schema import (
    JOB_ID,
    JOB_ID_RULE,
    JOB_SHA256,
    JobError,
    RenderJob,
    describe_kind,
    parse_job,
)

JOB_SUFFIXES = (".yaml", ".yml", ".json")
FOLDER_JOB_NAMES = tuple(f"job{suffix}" for suffix in JOB_SUFFIXES)


class _JobYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: a job never needs one, and alias chains expand without bound."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not accepted in a job file", event.start_mark
            )
        return super().compose_node(parent, index)


def read_job_bytes(path: Path, source: str | None = None, *, max_bytes: int | None = None) -> bytes:
    """The bytes of a job file, opened without following a symlink and refused above the size limit."""
    source = source or str(path)
    limit = config.JOB_MAX_BYTES.read() if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if os.path.islink(path):
            raise JobError(source, None, "is a symlink: job files are never read through a link") from None
        raise JobError(source, None, f"cannot be read: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise JobError(source, None, "is not a regular file")
        if st.st_size > limit:
            raise JobError(
                source,
                None,
                f"is {st.st_size:,} bytes; a job file may have at most {limit:,} (MT_JOB_MAX_BYTES)",
            )
        data = f.read(limit + 1)
    if len(data) > limit:  # grew since the stat
        raise JobError(source, None, f"is more than {limit:,} bytes (MT_JOB_MAX_BYTES)")
    return data


def parse_job_bytes(data: bytes, suffix: str, source: str) -> dict[str, Any]:
    """The mapping in a job file's bytes (`suffix` says YAML or JSON); JobError, quoting none of the bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JobError(source, None, f"is not UTF-8 text (byte {e.start})") from None
    try:
        doc = json.loads(text) if suffix.lower() == ".json" else yaml.load(text, Loader=_JobYamlLoader)
    except json.JSONDecodeError as e:
        raise JobError(
            source, None, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except yaml.YAMLError as e:
        raise JobError(source, None, f"is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise JobError(source, None, "is nested too deeply to be a job") from None
    except MemoryError:
        raise JobError(source, None, "does not fit in memory: not a job") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4300)
        raise JobError(
            source, None, f"holds a value that cannot be read: {str(e).split(';')[0][:200]}"
        ) from None
    if not isinstance(doc, dict):
        raise JobError(source, None, f"expected a mapping of fields, got {describe_kind(doc)}")
    return doc


def read_job_document(path: Path, source: str | None = None, *, record_sha256: bool = True) -> dict[str, Any]:
    """The mapping in a .yaml/.yml/.json job file, with `job_sha256` the sha256 of the bytes read
    (`record_sha256=False` keeps the one a stored job recorded); JobError naming `source`."""
    source = source or str(path)
    if path.suffix.lower() not in JOB_SUFFIXES:
        raise JobError(source, None, f"expected a .yaml, .yml or .json file, got {path.name!r}")
    data = read_job_bytes(path, source)
    doc = parse_job_bytes(data, path.suffix, source)
    if record_sha256:
        doc[JOB_SHA256] = hashlib.sha256(data).hexdigest()
    return doc


def _yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what, never the document's text (a rejected file may be anything, secrets included)."""
    problem = getattr(e, "problem", None) or type(e).__name__
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem[:100]}{where}"


def read_job_entry(
    path: Path, source: str, *, name: str | None = None, record_sha256: bool = True
) -> tuple[dict[str, Any], Path, str]:
    """(document, folder its media are relative to, source naming the job file) of a job file or folder.

    `name` is the entry's name as the user gave it (default: the path's), which a job folder's id
    defaults to. JobError naming `source` for anything that is not a readable job.
    """
    name = name or path.name
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.name in FOLDER_JOB_NAMES)
        if len(found) != 1:
            others = sorted(p.name for p in path.iterdir() if p.suffix.lower() in JOB_SUFFIXES)
            seen = ", ".join(found) or (
                f"none ({', '.join(others)}: rename the job file job{Path(others[0]).suffix})"
                if others
                else "none"
            )
            raise JobError(
                source,
                None,
                f"a job folder holds exactly one of {', '.join(FOLDER_JOB_NAMES)} and its media; found {seen}",
            )
        source = f"{source}/{found[0]}"
        doc = read_job_document(path / found[0], source, record_sha256=record_sha256)
        if "id" not in doc:
            if not JOB_ID.fullmatch(name):
                raise JobError(
                    source,
                    "id",
                    f"not given, and the folder name {name!r} is not a valid id ({JOB_ID_RULE}): set id",
                )
            doc = {"id": name, **doc}
        return doc, path, source
    if path.suffix.lower() not in JOB_SUFFIXES and path.exists():
        raise JobError(
            source,
            None,
            f"not a render job: expected a {', '.join(JOB_SUFFIXES)} file, or a folder holding one "
            f"of {', '.join(FOLDER_JOB_NAMES)} and its media",
        )
    return read_job_document(path, source, record_sha256=record_sha256), path.parent, source


def load_job(
    path: str | Path,
    *,
    volume_root: Path | None = None,
    allowed_roots: Sequence[Path] = (),
    check_media: bool = True,
    record_sha256: bool = True,
) -> RenderJob:
    """Read a job file, or a job folder, and validate it (`parse_job`).

    Media references are relative to the folder the job file is in; a job folder's id defaults to
    the folder's name, a job file's to its stem. `record_sha256=False` is for jobs the queue stored:
    they keep the job_sha256 of the file that was accepted.
    """
    path = Path(path)
    doc, base_dir, source = read_job_entry(path, str(path), record_sha256=record_sha256)
    return parse_job(
        doc,
        source=source,
        base_dir=base_dir,
        volume_root=volume_root,
        allowed_roots=allowed_roots,
        check_media=check_media,
    )
