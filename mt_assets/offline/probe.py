"""The child side of the offline verifier: run the worker's load with the network cut, trace files.

Started by `verify.py` as a FRESH interpreter, by file path, never as a module:

    python -P <this file> SPEC REPORT

`-P` and running by path mean nothing of mt_assets (nor anything else but the interpreter's own
start-up: site, encodings and the .pth files of site-packages) is imported before the audit hook
is installed, which is the first thing `__main__` does. Only then are the stdlib helpers, the
project and the loaders imported.

SPEC is a JSON file written by the parent:

    volume      absolute path of the volume root
    manifest    path of the manifest YAML to load (a copy the parent wrote)
    display     the manifest's name in messages
    only        list of load units, or null for the whole load (exactly what the worker runs)
    overrides   {unit: location}: the test seam, see overrides.py ({} in production)
    sys_path    folders to put in front of sys.path (the project root)
    dtype       a torch dtype name for the load (bfloat16: the repack path), or null (float32)
    isolation   network-namespace (the parent started this process inside netns.py) | audit-hooks

REPORT is the one JSON document this process writes back (not stdout: loaders print there):

    units       [{unit, components, status: loaded|failed|not_run, seconds, bytes, files, repack, error}]
    opens       [[path, mode, via, unit]] every file opened or mapped, first sighting per
                (path, unit, via); path absolute as seen by the process (not resolved)
                via: open (audit event "open": builtins.open, io.open, os.open, ...),
                     safetensors (safe_open, which opens and maps in Rust, bypassing "open"),
                     mmap, fd (a snapshot of /proc/self/maps and /proc/self/fd at each unit's end)
    network     [{event, host, port, detail, unit, stack}] every refused network attempt; in a network
                namespace also one entry per unit whose load the namespace's counters saw try
                (event "netns.counters", host "(native code)")
    isolation   {mode, interfaces, counters}: the namespace as this process saw it (interfaces: its
                network interfaces, for the parent to confirm the cut; counters: the watched
                counters at the end), or {mode: audit-hooks}
    overrides   {unit: applied?}
    roots       the interpreter's prefixes and site-packages folders, for the parent to classify
    seconds     wall time of the load (imports excluded)

Why an audit hook (PEP 578): it sees every socket call and every Python-level open from any
library, raises before the call is made (so no packet leaves and nothing hangs on a timeout),
and it cannot be removed by the code it watches. What it cannot see, native code that opens
files or sockets by itself, is covered by the safetensors wrapper and the maps/fd snapshots
for files, by HF_HUB_OFFLINE for the Hub client (whose refusal is recorded, see
`_watch_hub_offline`), and, for sockets, by the network namespace where the parent could make
one (isolation.py): there every connection fails in the kernel, and the namespace's counters
(`NETNS_COUNTERS`), which start at zero and which no refused Python call reaches, are read at
each unit's end: any increase is a native attempt, recorded against that unit.
"""

import os
import sys

# Audit events that reach for the network. The hook records and refuses every one of them,
# loopback included: the load path must touch the volume and nothing else.
NETWORK_EVENTS = frozenset(
    {
        "socket.connect",  # connect() and connect_ex()
        "socket.sendto",
        "socket.sendmsg",
        "socket.getaddrinfo",
        "socket.gethostbyname",  # gethostbyname() and gethostbyname_ex()
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "http.client.connect",
        "urllib.Request",
        "ftplib.connect",
        "smtplib.connect",
        "poplib.connect",
        "imaplib.open",
        "nntplib.connect",
        "telnetlib.Telnet.open",
        "webbrowser.open",
    }
)
# Not refused: socket.__new__ and socket.bind (urllib3 binds a socket to ::1 at import to learn
# whether IPv6 exists; nothing leaves the host), socket.gethostname (local).

# The network namespace's counters that any outgoing attempt moves (nstat's names): with no
# interface up, IPv4 attempts end in IpOutNoRoutes; the others move only if something got further.
NETNS_COUNTERS = (
    "IpOutRequests",
    "IpOutNoRoutes",
    "TcpActiveOpens",
    "UdpOutDatagrams",
    "Ip6OutRequests",
    "Ip6OutNoRoutes",
    "Udp6OutDatagrams",
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

_state: dict = {"unit": None, "busy": False, "netns": None}  # netns: the counters last read
_opens: dict = {}  # (path, unit, via) -> mode, in order of first sighting
_network: list = []
_native: set = set()


class NetworkBlocked(RuntimeError):
    """Raised inside the load by the audit hook: the network is cut for the offline proof.

    Deliberately not an OSError: HTTP clients map OSErrors to connection errors and retry them
    with back-off (huggingface_hub: ~20 tries over ~45 s); this one ends the attempt at once."""


def _record_open(path, mode: str, via: str) -> None:
    if isinstance(path, int):
        return  # an already-open descriptor: its file was recorded when it was opened
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        return
    path = os.path.abspath(text)
    if via in ("mmap", "fd"):  # snapshots repeat what is still mapped: first sighting only
        if path in _native:
            return
        _native.add(path)
    key = (path, _state["unit"], via)
    if key not in _opens:
        _opens[key] = mode


def _address(event: str, args: tuple) -> tuple:
    """(host, port) named by a network audit event's arguments."""
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple) and address:
            return str(address[0]), address[1] if len(address) > 1 else None
        return (os.fsdecode(address) if isinstance(address, (str, bytes)) else repr(address)), None
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        return str(host), args[1]
    if event in ("socket.gethostbyname", "socket.gethostbyaddr"):
        return str(args[0]), None
    if event == "socket.getnameinfo":
        sockaddr = args[0]
        return (str(sockaddr[0]), sockaddr[1]) if isinstance(sockaddr, tuple) else (str(sockaddr), None)
    if event in ("urllib.Request", "webbrowser.open"):
        from urllib.parse import urlsplit

        parts = urlsplit(str(args[0]))
        return parts.hostname or str(args[0]), parts.port
    if len(args) >= 3:  # http.client.connect, ftplib.connect, ...: (self, host, port)
        return str(args[1]), args[2]
    return repr(args), None


def record_network(event: str, host: str, port, detail: str, *, stack: bool = True) -> None:
    import traceback

    _network.append(
        {
            "event": event,
            "host": host,
            "port": port if isinstance(port, int) else (int(port) if str(port).isdigit() else None),
            "detail": detail,
            "unit": _state["unit"],
            "stack": traceback.format_stack()[:-2] if stack else [],  # without the hook's own frames
        }
    )


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        mode = args[1]
        if mode is None:  # os.open: (path, None, flags)
            mode = "w" if (args[2] or 0) & _WRITE_FLAGS else "r"
        _record_open(args[0], str(mode), "open")
    elif event in NETWORK_EVENTS:
        host, port = _address(event, args)
        where = f"{host}:{port}" if port is not None else host
        if not _state["busy"]:  # formatting the stack opens source files: no recursion
            _state["busy"] = True
            try:
                record_network(event, host, port, f"{event} {where}")
            finally:
                _state["busy"] = False
        raise NetworkBlocked(f"mt-assets verify-offline: network is cut: {event} {where} refused")


def _snapshot() -> None:
    """Files mapped into memory or held open right now: what native loaders opened themselves."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    _record_open(parts[5].removesuffix(" (deleted)"), "r", "mmap")
    except OSError:
        pass  # not Linux: the audit events still count
    try:
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/"):
                _record_open(target.removesuffix(" (deleted)"), "r", "fd")
    except OSError:
        pass


def _netns_counters() -> dict:
    """NETNS_COUNTERS as this process's network namespace has them (/proc/self/net/snmp, snmp6)."""
    counters: dict = {}
    try:
        with open("/proc/self/net/snmp") as f:
            lines = f.read().splitlines()
        # Pairs of lines: "Ip: Forwarding DefaultTTL ...", then "Ip: 1 64 ...".
        for header, values in zip(lines[::2], lines[1::2], strict=False):
            proto, _, names = header.partition(":")
            for name, value in zip(names.split(), values.partition(":")[2].split(), strict=False):
                counters[proto + name] = int(value)
        with open("/proc/self/net/snmp6") as f:
            for line in f:
                name, _, value = line.partition(" ")
                counters[name] = int(value)
    except (OSError, ValueError):
        pass  # counted as zero: the namespace still refuses every connection
    return {name: counters.get(name, 0) for name in NETNS_COUNTERS}


def _check_netns() -> None:
    """In a network namespace: record what its counters saw since the last look, as the current unit's."""
    last = _state["netns"]
    if last is None:
        return
    now = _netns_counters()
    moved = {name: now[name] - last[name] for name in NETNS_COUNTERS if now[name] > last[name]}
    _state["netns"] = now
    if moved:
        counts = ", ".join(f"{name} +{n}" for name, n in moved.items())
        record_network(
            "netns.counters",
            "(native code)",
            None,
            f"the network namespace counted {counts}: an attempt the audit hook did not see, "
            "so made by native code; the namespace made it fail",
            stack=False,  # the attempt is over; this stack would be the snapshot's, not its maker's
        )


def _interfaces() -> list:
    try:
        with open("/proc/self/net/dev") as f:
            return [line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line]
    except OSError:
        return []


def _watch_safetensors() -> None:
    """safe_open opens and mmaps in Rust (no "open" event) and unmaps on close: record its path."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        return
    real = safetensors.safe_open

    def safe_open(filename, *args, **kwargs):
        _record_open(filename, "r", "safetensors")
        return real(filename, *args, **kwargs)

    for module in (safetensors, safetensors.torch):
        if getattr(module, "safe_open", None) is real:
            module.safe_open = safe_open


def _watch_hub_offline() -> None:
    """HF_HUB_OFFLINE makes huggingface_hub refuse before any socket call, so a loader that asks
    the Hub by repo id never reaches the audit hook. Every such refusal constructs
    OfflineModeIsEnabled: record it as a network attempt on the Hub endpoint's host."""
    try:
        from huggingface_hub import constants, errors
    except ImportError:
        return
    from urllib.parse import urlsplit

    cls = errors.OfflineModeIsEnabled
    real_init = cls.__init__

    def __init__(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        message = str(args[0]) if args else ""
        url = constants.ENDPOINT
        if message.startswith("Cannot reach "):
            url = message[len("Cannot reach ") :].split(": offline mode", 1)[0]
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        record_network("huggingface_hub.offline", parts.hostname or url, port, message)

    cls.__init__ = __init__


def main(argv: list) -> int:
    import json
    import time

    spec_path, report_path = argv[1], argv[2]
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    for folder in reversed(spec.get("sys_path") or []):
        sys.path.insert(0, folder)
    isolation: dict = {"mode": spec.get("isolation") or "audit-hooks"}
    if isolation["mode"] == "network-namespace":
        isolation["interfaces"] = _interfaces()
        _state["netns"] = _netns_counters()  # zero in a fresh namespace; read, not assumed

    _watch_safetensors()
    _watch_hub_offline()
    import importlib
    import site
    import sysconfig

    from mt_assets.manifest import load_manifest
    from mt_assets.models.pipeline import UNITS, load_pipeline_components, unit_components
    from mt_assets.offline.overrides import UNIT_LOADERS, apply_overrides
    from mt_assets.volume import LocalVolume

    for module_name, _ in UNIT_LOADERS.values():  # what the pipeline imports first: not a unit's time
        importlib.import_module(module_name)
    manifest = load_manifest(spec["manifest"], display=spec.get("display"))
    volume = LocalVolume(spec["volume"])
    applied = apply_overrides(spec.get("overrides") or {})
    dtype = getattr(importlib.import_module("torch"), spec["dtype"]) if spec.get("dtype") else None
    requested = list(spec.get("only") or UNITS)
    units: dict = {}
    started: dict = {}

    def begin(unit) -> None:
        _state["unit"] = unit
        started["at"] = time.perf_counter()

    def on_loaded(report) -> None:
        _snapshot()
        _check_netns()
        units[report.unit] = {
            **report.to_json(),
            "unit": report.unit,
            "status": "loaded",
            "files": list(report.files),
            "error": None,
        }
        later = requested[requested.index(report.unit) + 1 :] if report.unit in requested else []
        begin(later[0] if later else None)

    _snapshot()  # what is mapped before the load (the interpreter, its libraries) belongs to no unit
    _check_netns()  # and an attempt made while importing
    load_started = time.perf_counter()
    remaining = requested
    whole = not spec.get("only")
    while remaining:
        begin(remaining[0])
        try:
            # The first pass is the worker's exact call (only=None for the whole load).
            load_pipeline_components(
                volume, manifest, only=None if whole else remaining, on_loaded=on_loaded, dtype=dtype
            )
            break
        except Exception as e:
            failed = next((u for u in remaining if u not in units), remaining[0])
            _snapshot()
            _check_netns()
            first = (str(e).strip().splitlines() or [""])[0]
            units[failed] = {
                "unit": failed,
                "components": list(unit_components(manifest, failed)) if failed in UNITS else [],
                "status": "failed",
                "seconds": round(time.perf_counter() - started["at"], 3),
                "bytes": None,
                "files": [],
                "error": f"{type(e).__name__}: {first}" if first else type(e).__name__,
            }
            # Keep tracing the units after the failed one: one run shows every problem.
            remaining = remaining[remaining.index(failed) + 1 :] if failed in remaining else []
            whole = False
    seconds = time.perf_counter() - load_started
    _state["unit"] = None
    _check_netns()
    if _state["netns"] is not None:
        isolation["counters"] = dict(_state["netns"])
    for unit in requested:
        units.setdefault(
            unit,
            {
                "unit": unit,
                "components": list(unit_components(manifest, unit)) if unit in UNITS else [],
                "status": "not_run",
                "seconds": None,
                "bytes": None,
                "files": [],
                "error": None,
            },
        )
    report = {
        "isolation": isolation,
        "units": [units[u] for u in requested],
        "opens": [[path, mode, via, unit] for (path, unit, via), mode in list(_opens.items())],
        "network": list(_network),
        "overrides": {u: bool(flag) for u, flag in applied.items()},
        "roots": {
            "prefixes": sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}),
            "site": sorted(
                {
                    *site.getsitepackages(),
                    site.getusersitepackages(),
                    *(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")),
                }
            ),
            "executable": sys.executable,
        },
        "seconds": round(seconds, 3),
    }
    text = json.dumps(report)
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.addaudithook(_hook)  # first: before anything else is imported
    raise SystemExit(main(sys.argv))
