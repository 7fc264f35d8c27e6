"""The one reader of job files: a .yaml/.yml/.json file, or a folder holding one as job.yaml/.yml/.json.

The CLI (`mt-assets render`, `jobs submit`), the inbox scan and `JobQueue.load` all read through
here, so a job file means the same thing, and fails with the same message, wherever it is given.
A folder's media are relative to the folder; a file's to the file's folder. The document is then
validated by `schema.parse_job`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mt_assets.jobs.schema import JOB_ID, JOB_ID_RULE, JobError, RenderJob, describe_kind, parse_job

JOB_SUFFIXES = (".yaml", ".yml", ".json")
FOLDER_JOB_NAMES = tuple(f"job{suffix}" for suffix in JOB_SUFFIXES)


def read_job_document(path: Path, source: str | None = None) -> dict[str, Any]:
    """The mapping in a .yaml/.yml/.json job file; JobError naming `source` (default: the path)."""
    source = source or str(path)
    if path.suffix.lower() not in JOB_SUFFIXES:
        raise JobError(source, None, f"expected a .yaml, .yml or .json file, got {path.name!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JobError(source, None, f"cannot be read: {e}") from None
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise JobError(source, None, f"is not valid JSON: {e}") from None
    except yaml.YAMLError as e:
        raise JobError(source, None, f"is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(doc, Mapping):
        raise JobError(source, None, f"expected a mapping of fields, got {describe_kind(doc)}")
    return dict(doc)


def read_job_entry(path: Path, source: str, *, name: str | None = None) -> tuple[dict[str, Any], Path, str]:
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
        doc = read_job_document(path / found[0], source)
        if "id" not in doc:
            if not JOB_ID.fullmatch(name):
                raise JobError(
                    source, "id", f"not given, and the folder name {name!r} is not a valid id ({JOB_ID_RULE}): set id"
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
    return read_job_document(path, source), path.parent, source


def load_job(
    path: str | Path,
    *,
    volume_root: Path | None = None,
    allowed_roots: Sequence[Path] = (),
    check_media: bool = True,
) -> RenderJob:
    """Read a job file, or a job folder, and validate it (`parse_job`).

    Media references are relative to the folder the job file is in; a job folder's id defaults to
    the folder's name, a job file's to its stem.
    """
    path = Path(path)
    doc, base_dir, source = read_job_entry(path, str(path))
    return parse_job(
        doc,
        source=source,
        base_dir=base_dir,
        volume_root=volume_root,
        allowed_roots=allowed_roots,
        check_media=check_media,
    )
