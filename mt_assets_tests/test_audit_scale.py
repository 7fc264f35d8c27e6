"""An audit at scale (issue 20): tens of thousands of files audited by the CLI in a fresh process, on a
terminal, show their progress as they go and take memory in proportion (a million must fit in 1 GB)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from fcntl import ioctl
from pathlib import Path

import pytest
from rich.console import Console

from mt_assets.audit import AuditReport, FileAudit
from mt_assets.manifest import load_manifest
from mt_assets.terminal import FILE_ROWS, print_audit
from mt_assets_tests.conftest import CLI

ENTRIES = 20_000
PER_COMPONENT = 1_000
# Peak memory over the imports may be FIXED (the hash cache's pages, threads, rich) and PER_ENTRY per
# file: a million files then take under 1 GB. Measured at 20,000: ~20 MB (~1 KB per file, most of it
# the fixed part; ~0.65 KB per file at 100,000); before issue 20, 165 MB (8 KB per file).
FIXED = 32_000_000
PER_ENTRY = 900
assert FIXED + PER_ENTRY * 1_000_000 < 1_000_000_000

# The CLI, reporting its own memory on the way out: VmRSS after the imports and VmHWM, the peak.
# (A child's ru_maxrss would carry pytest's memory into it across the fork and exec.)
_CLI_MEASURED = """
import atexit, json, os, sys

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

from mt_assets.cli import main

base = status("VmRSS")
atexit.register(lambda: json.dump({"base": base, "peak": status("VmHWM")}, open(os.environ["AUDIT_TEST_MEMORY_FILE"], "w")))
sys.argv[0] = "mt-assets"
main()
"""


def _write_volume(root: Path, entries: int) -> tuple[Path, Path, int]:
    """`entries` small files under root/volume/models/ and a manifest pinning them; (manifest, volume, bytes)."""
    volume, manifest = root / "volume", root / "manifest.yaml"
    total = 0
    with open(manifest, "w", encoding="utf-8") as m:
        m.write("profile: scale\ncomponents:\n")
        for index in range(entries):
            c, f = divmod(index, PER_COMPONENT)
            if f == 0:
                m.write(
                    f"- name: c{c:03d}\n  repo: test/c{c:03d}\n  revision: {'a' * 40}\n  dir: c{c:03d}\n  files:\n"
                )
            rel = f"part-{f // 100:02d}/file-{f:04d}.json"
            path = volume / "models" / f"c{c:03d}" / rel
            if f % 100 == 0:
                path.parent.mkdir(parents=True)
            data = f'{{"index": {index}}}\n'.encode()
            path.write_bytes(data)
            m.write(
                f"  - path: {rel}\n    size: {len(data)}\n    sha256: {hashlib.sha256(data).hexdigest()}\n"
                "    kind: config\n"
            )
            total += len(data)
    return manifest, volume, total


def _audit_on_a_terminal(manifest: Path, volume: Path, tmp: Path) -> tuple[dict, str, dict]:
    """`mt-assets audit --json` with stderr on a pseudo-terminal: (its JSON, what the terminal showed, memory)."""
    memory = tmp / "memory.json"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="120", AUDIT_TEST_MEMORY_FILE=str(memory))
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with open(tmp / "stdout.json", "w+", encoding="utf-8") as stdout:
        proc = subprocess.Popen(
            [
                CLI[0],
                "-c",
                _CLI_MEASURED,
                "audit",
                "--manifest",
                str(manifest),
                "--volume",
                str(volume),
                "--json",
            ],
            stdout=stdout,
            stderr=slave,
            env=env,
        )
        os.close(slave)
        shown, deadline = bytearray(), time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                if select.select([master], [], [], 1.0)[0]:
                    try:
                        data = os.read(master, 1 << 16)
                    except OSError:  # EIO: the child closed the terminal
                        break
                    if not data:
                        break
                    shown += data
                elif proc.poll() is not None:
                    break
        finally:
            os.close(master)
            returncode = proc.wait(timeout=60)
        stdout.seek(0)
        document = json.load(stdout)
    assert returncode == 0, shown.decode(errors="replace")[-2000:]
    return (
        document,
        re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace")),
        json.loads(memory.read_text()),
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS and VmHWM from /proc")
def test_an_audit_of_twenty_thousand_files_shows_files_checked_as_it_goes_in_memory_for_a_million(
    tmp_path: Path,
) -> None:
    manifest, volume, total = _write_volume(tmp_path, ENTRIES)
    for run, bytes_read in (("first, every file hashed", total), ("again, from the hash cache", 0)):
        started = time.perf_counter()
        doc, shown, memory = _audit_on_a_terminal(manifest, volume, tmp_path)
        seconds = time.perf_counter() - started
        assert doc["complete"] and doc["counts"]["ok"] == ENTRIES and len(doc["files"]) == ENTRIES, run
        assert doc["bytes_read"] == bytes_read, run

        # The files checked, counted on the terminal from the start to the end of the audit and, while
        # it reads every file (a second or more), in between.
        counts = {int(n.replace(",", "")) for n in re.findall(r"([\d,]+)/20,000 files", shown)}
        assert {0, ENTRIES} <= counts, f"{run}: {sorted(counts)} on the terminal: {shown[-500:]!r}"
        if bytes_read:
            assert any(0 < n < ENTRIES for n in counts), f"{run}: {sorted(counts)}: {shown[-500:]!r}"

        over_imports = memory["peak"] - memory["base"]
        assert over_imports < FIXED + PER_ENTRY * ENTRIES, (
            f"{run}: peak {over_imports / 1e6:.0f} MB over the imports, {over_imports / ENTRIES:.0f} bytes "
            f"per file ({seconds:.1f} s)"
        )


def test_the_json_report_is_written_a_file_at_a_time_as_the_whole_document_would_be(tmp_path: Path) -> None:
    manifest, volume, _ = _write_volume(tmp_path, 2_500)  # more than one batch
    from mt_assets.audit import audit
    from mt_assets.volume import LocalVolume

    report = audit(load_manifest(manifest), LocalVolume(volume))
    written = io.StringIO()
    report.write_json(written)
    assert written.getvalue() == json.dumps(report.to_json(), indent=2)
    empty = AuditReport(profile="p", manifest="m", volume="v", free_bytes=0)
    written = io.StringIO()
    empty.write_json(written)
    assert written.getvalue() == json.dumps(empty.to_json(), indent=2)


def test_the_files_table_of_a_large_audit_lists_what_is_wrong_first_and_says_how_many_it_leaves_out(
    tmp_path: Path,
) -> None:
    manifest, volume, _ = _write_volume(tmp_path, 1_000)
    m = load_manifest(manifest)
    files = [FileAudit(f, "missing" if i % 100 == 7 else "ok", size=f.size) for i, f in enumerate(m.files)]
    report = AuditReport(
        profile="scale", manifest=str(manifest), volume=str(volume), free_bytes=1 << 40, files=files
    )
    out = io.StringIO()
    print_audit(report, Console(file=out, width=200, highlight=False))
    text = out.getvalue()
    assert FILE_ROWS < 1_000
    listed = [line for line in text.splitlines() if "file-" in line]
    assert len(listed) == 10 and all("missing" in line for line in listed)  # the 10 missing, no ok one
    assert "990 more not listed here (--json lists every file)" in text
    assert "incomplete: 990 of 1000 files ok (10 missing)" in " ".join(text.split())

    all_ok = AuditReport(
        profile="scale",
        manifest=str(manifest),
        volume=str(volume),
        free_bytes=1 << 40,
        files=[FileAudit(f, "ok", size=f.size) for f in m.files],
    )
    out = io.StringIO()
    print_audit(all_ok, Console(file=out, width=200, highlight=False))
    assert "files: all 1,000 ok, not listed here (--json lists every file)" in out.getvalue()
    assert "file-" not in out.getvalue()
