"""The launcher that puts the offline probe into a fresh network namespace, where no connection can succeed.

Run by path, never imported by the probe, with an isolated interpreter (`-I -S`: nothing but the
stdlib, so its start costs a few milliseconds and no site-packages file is read before the probe
starts tracing):

    python -I -S <this file> check            the trial: enter a namespace, print one JSON line
                                              {"available": true, "interfaces": [...], "routes": n}
                                              or {"available": false, "reason": "..."}; exit 0
    python -I -S <this file> exec -- ARGV...  enter a namespace, then execv(ARGV) (the probe);
                                              if it cannot: one line on stderr, exit status 70

Entering is `unshare(CLONE_NEWUSER | CLONE_NEWNET)` through ctypes (os.unshare needs Python 3.12),
then the process's own uid and gid mapped onto themselves (`setgroups` denied first, as the
kernel requires of an unprivileged process). The user namespace is what lets a process without
privileges own a network namespace; mapping the ids onto themselves (not onto root, as
`unshare --map-root-user` does) keeps what the load sees the same as outside: getuid(), the
owner of every file, the home folder.

A fresh network namespace has one interface, the loopback, and it is down: no address, no
route. Every connect() or sendto() fails in the kernel, whatever makes it (Python, or native
code such as hf_xet's Rust client that the probe's audit hook cannot see), loopback included:
127.0.0.1 inside is not the host's 127.0.0.1, so a server listening on the host is out of reach.
IPv4 attempts fail with ENETUNREACH and are counted by the namespace (Ip OutNoRoutes, which the
probe reads); IPv6 ones fail with EADDRNOTAVAIL (no source address) and are not counted.

Unix sockets on the file system are not network and stay reachable (they are files: the trace
sees the ones Python opens).
"""

import ctypes
import errno
import json
import os
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
EXIT_UNAVAILABLE = 70  # EX_SOFTWARE: the probe never started

# Why unshare() fails, by errno, in words a user can act on.
_HINTS = {
    errno.EPERM: "not permitted: a container's seccomp profile (Docker's default refuses unshare), "
    "kernel.unprivileged_userns_clone=0 or AppArmor's restriction of unprivileged user namespaces",
    errno.ENOSPC: "the user namespace limit is reached (user.max_user_namespaces; 0 disables them)",
    errno.EINVAL: "the kernel lacks user or network namespaces (CONFIG_USER_NS, CONFIG_NET_NS)",
    errno.ENOSYS: "the kernel has no unshare()",
    errno.EUSERS: "user namespaces nested too deep",
}


class Unavailable(Exception):
    """This process cannot have a network namespace of its own; the message says why."""


def enter() -> None:
    """Move this process into a new user + network namespace, its uid and gid mapped onto themselves."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"network namespaces are a Linux feature; this is {sys.platform}")
    uid, gid = os.geteuid(), os.getegid()  # before: inside, unmapped ids read as 65534
    libc = ctypes.CDLL(None, use_errno=True)
    unshare = getattr(libc, "unshare", None)
    if unshare is None:
        raise Unavailable("the C library has no unshare()")
    if unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        name = errno.errorcode.get(code, str(code))
        raise Unavailable(
            f"unshare(CLONE_NEWUSER|CLONE_NEWNET) failed with {name} ({os.strerror(code)}): "
            + _HINTS.get(code, "see unshare(2)")
        )
    for path, text in (
        ("/proc/self/setgroups", "deny"),  # absent before Linux 3.19, where it is not needed
        ("/proc/self/uid_map", f"{uid} {uid} 1"),
        ("/proc/self/gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(path, "w") as f:
                f.write(text)
        except FileNotFoundError:
            if path != "/proc/self/setgroups":
                raise Unavailable(f"{path}: missing; the kernel cannot map ids") from None
        except OSError as e:
            raise Unavailable(f"writing {path}: {e.strerror} (a security module refusing the map?)") from None


def interfaces() -> list[str]:
    """The network interfaces this process sees (its namespace's), from /proc/self/net/dev."""
    with open("/proc/self/net/dev") as f:
        return [line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line]


def routes() -> int:
    """IPv4 routes in the main table (a fresh namespace has none)."""
    with open("/proc/self/net/route") as f:
        return max(0, len(f.readlines()) - 1)


def main(argv: list) -> int:
    command = argv[1] if len(argv) > 1 else ""
    if command == "check":
        try:
            enter()
            doc = {"available": True, "interfaces": interfaces(), "routes": routes()}
        except Unavailable as e:
            doc = {"available": False, "reason": str(e)}
        print(json.dumps(doc))
        return 0
    if command == "exec" and argv[2:3] == ["--"] and len(argv) > 3:
        try:
            enter()
        except Unavailable as e:
            print(f"mt-assets verify-offline: network namespace: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        os.execv(argv[3], argv[3:])  # does not return
    print(f"usage: {argv[0]} check | exec -- ARGV...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
