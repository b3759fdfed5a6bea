"""A sandbox for model-written programs: no network, a read-only view of only what Python needs, their own directory.

    unshare --mount --net --pid --ipc --uts --fork   new namespaces (plus a user namespace where not root)
      -> the launcher below, as pid 1 of the new pid namespace (the base interpreter, `-I -S`):
         a new root on a small tmpfs with read-only bind mounts of the system's programs and libraries (/usr, /lib,
         /lib64, /bin, ... as they exist) and of the base interpreter's prefix (at the same paths, so it runs
         unchanged; its site-packages hidden), a minimal /dev (null, zero, full, random, urandom) and the
         program's own directory as /tmp, read-write; pivot_root into it, detach the host's tree, root read-only
      -> setpriv: uid/gid 65534 when the host runs as root (the namespace's root in a user namespace otherwise),
         no capabilities, no new privileges -> python -I -S (stdlib only) runs the program

The program sees no /root, /home, /work, host /tmp, /proc or /sys, a network namespace with nothing in it (not
even loopback up), and only the environment variables the caller passes (`PROGRAM_ENV`). When the launcher exits
the kernel kills everything left in its pid namespace; killing the launcher (the caller's timeout kills unshare's
process group) does the same. Not isolated: CPU, memory and disk use beyond what the caller's rlimits bound (no
cgroups), and the kernel itself (no seccomp filter).

Two ways in, tried in this order by the probe behind `sandbox_available`: as real root (CAP_SYS_ADMIN: plain
namespaces, the program runs as uid 65534), or in a user namespace (unprivileged users, or root without
CAP_SYS_ADMIN, where the kernel allows user namespaces: the program is the namespace's root without any
capability). Kubernetes pods need one of the two. `CROSSOVER_SANDBOX=off` makes this process behave as a host
without the sandbox (to test the refusal).

This file also runs as the launcher, once per program: it imports only what the launcher needs at the top (the
standard library, cheap modules); the caller's side imports the rest where it uses it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sys
import sysconfig
import tempfile

SANDBOX_ENV = "CROSSOVER_SANDBOX"  # "off": behave as a host without the sandbox (tests of the refusal)
PROGRAM_UID = 65534  # "nobody": the uid and gid a program runs as when the host runs as root
# Everything the program's environment holds; its own directory is /tmp inside the sandbox.
PROGRAM_ENV = {"PATH": os.defpath, "HOME": "/tmp", "TMPDIR": "/tmp", "LC_ALL": "C.UTF-8"}
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
SYSTEM_BIN = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
DEVICES = ("null", "zero", "full", "random", "urandom")
AS_ROOT, IN_USER_NAMESPACE = "root", "user namespace"

# The launcher starts from this file's path under `python -I -S -c` (cwd: the run's folder): unlike `python FILE`,
# that keeps this package's folder off sys.path on Python 3.10 too, so no module here shadows the standard library.
_RUN_LAUNCHER = "import sys; sys.argv = sys.argv[1:]; exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))"


def sandbox_available() -> tuple[bool, str]:
    """Whether programs can run in the sandbox on this host, and why not when they cannot."""
    if os.environ.get(SANDBOX_ENV) == "off":
        return False, f"{SANDBOX_ENV}=off"
    way, reason = _probe()
    return way is not None, reason


def refusal(reason: str) -> str:
    """The error that stops humaneval_pass@k on a host without the sandbox: why, and the two ways out."""
    return (
        f"humaneval_pass@k executes model-written programs, and this host cannot sandbox them ({reason}); run it "
        "on a Linux host that allows `unshare` (root with CAP_SYS_ADMIN, or user namespaces), or set "
        "eval.unsafe_execution: true in the spec to execute them unsandboxed"
    )


def use_sandbox(unsafe_execution: bool) -> bool:
    """True: run programs in the sandbox. False: this host has none and the spec opted in to running them
    unsandboxed (warned once). Otherwise a ValueError that says why there is no sandbox and what to do."""
    available, reason = sandbox_available()
    if available:
        return True
    if not unsafe_execution:
        raise ValueError(refusal(reason))
    _warn_unsandboxed(reason)
    return False


@functools.cache  # once per process and reason, not once per program
def _warn_unsandboxed(reason: str) -> None:
    print(
        f"warning: executing model-written programs WITHOUT a sandbox (eval.unsafe_execution is true; {reason})",
        file=sys.stderr,
    )


def prepare(folder: str | os.PathLike) -> str:
    """Lay out an empty `folder` for one sandboxed run; returns the program's own directory (/tmp inside)."""
    return _lay_out(folder, _probe()[0])


def python_command(folder: str | os.PathLike, python_args: list[str]) -> list[str]:
    """The command that runs `python *python_args` (the base interpreter) in the sandbox, with `folder` laid out
    by `prepare`. Start it in its own session, and read its exit status with `exit_status`."""
    way, reason = _probe()
    if way is None:
        raise RuntimeError(f"no sandbox on this host: {reason}")
    return _command(way, folder, python_args)


def exit_status(folder: str | os.PathLike, returncode: int) -> int:
    """The program's exit status (negative: killed by that signal). The launcher, as pid 1 of its namespace,
    cannot die of the program's signal, so it writes the status to a file; without one (the launcher failed or
    was killed), the command's own status."""
    try:
        with open(os.path.join(folder, "status")) as status:
            return int(status.read())
    except (OSError, ValueError):
        return returncode


def _command(way: str, folder: str | os.PathLike, python_args: list[str]) -> list[str]:
    user_namespace = ["--map-root-user"] if way == IN_USER_NAMESPACE else []
    drop_to = str(PROGRAM_UID) if way == AS_ROOT else "-"  # "-": stay the user namespace's (capability-less) root
    return [
        _tool("unshare") or "unshare",
        "--mount",
        "--net",
        "--pid",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        *user_namespace,
        "--",
        _base_python(),
        "-I",
        "-S",
        "-c",
        _RUN_LAUNCHER,
        __file__,
        os.fspath(folder),
        drop_to,
        *python_args,
    ]


def _base_python() -> str:
    """The interpreter the virtual environment (if any) was made from: its prefix holds the standard library."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _tool(name: str) -> str | None:
    """A util-linux program where the system keeps it (also inside the sandbox, which binds these folders)."""
    return next((f"{d}/{name}" for d in SYSTEM_BIN if os.access(f"{d}/{name}", os.X_OK)), None)


@functools.cache
def _probe() -> tuple[str | None, str]:
    """The first way into the sandbox in which a trivial program runs on this host (None, and why not, if none)."""
    if sys.platform != "linux":
        return None, f"namespaces need Linux, this is {sys.platform}"
    for tool in ("unshare", "setpriv", "pivot_root"):
        if _tool(tool) is None:
            return None, f"util-linux `{tool}` is not installed"
    ways = [AS_ROOT, IN_USER_NAMESPACE] if os.getuid() == 0 else [IN_USER_NAMESPACE]
    reasons = []
    for way in ways:
        output = _try(way)
        if output == "sandbox ok":
            return way, ""
        reasons.append(f"{way}: {output or 'no output'}")
    return None, "; ".join(reasons)


def _try(way: str) -> str:
    """The output (or the error) of a trivial program run in the sandbox entered this way."""
    with tempfile.TemporaryDirectory(prefix="crossover-sandbox-probe-") as folder:
        _lay_out(folder, way)
        command = _command(way, folder, ["-c", "print('sandbox ok')"])
        try:
            done = subprocess.run(
                command,
                cwd=folder,
                env=PROGRAM_ENV,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                start_new_session=True,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        return output if exit_status(folder, done.returncode) == 0 else output[-500:] or f"exit {done.returncode}"


def _lay_out(folder: str | os.PathLike, way: str | None) -> str:
    os.mkdir(os.path.join(folder, "root"))  # the mount point of the new root
    home = os.path.join(folder, "home")
    os.mkdir(home)
    if way == AS_ROOT:
        os.chown(home, PROGRAM_UID, PROGRAM_UID)  # the program runs as this uid and writes here
    return home


# ---- the launcher: pid 1 inside the new namespaces, before and after it switches to the new root

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_REMOUNT, MS_BIND = 1024, 2048, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
MNT_DETACH = 2


def _launch(folder: str, drop_to: str, python_args: list[str]) -> None:
    os.umask(0o022)  # the new root's directories must be traversable by the program's uid
    status = open(os.path.join(folder, "status"), "w")  # opened now: the host's tree is gone after the switch
    setpriv, pivot_root = _tool("setpriv"), _tool("pivot_root")
    _mount(None, "/", MS_REC | MS_PRIVATE)  # nothing mounted below reaches the host's mount table
    root = os.path.join(folder, "root")
    _mount("tmpfs", root, MS_NOSUID | MS_NODEV, "tmpfs", "size=1m,mode=0755")
    for path in _runtime_paths():
        if os.path.islink(path):  # /bin -> usr/bin on merged-/usr systems: the same link, into the bound /usr
            os.symlink(os.readlink(path), root + path)
        else:
            _bind(path, root + path, MS_RDONLY | MS_NOSUID | MS_NODEV)
    for site_packages in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        if os.path.isdir(site_packages):  # off sys.path already (-S); hidden too: programs get the stdlib only
            _mount("tmpfs", root + site_packages, MS_RDONLY | MS_NOSUID | MS_NODEV, "tmpfs", "size=4k")
    for device in DEVICES:
        _bind(f"/dev/{device}", f"{root}/dev/{device}", MS_NOSUID | MS_NOEXEC)
    _bind(os.path.join(folder, "home"), root + "/tmp", MS_NOSUID | MS_NODEV)
    # pivot_root rather than chroot: once the host's tree is detached, no capability can reach it again
    os.chdir(root)
    if _run([pivot_root, ".", "."]) != 0:
        raise OSError("sandbox: pivot_root failed")
    _check(_libc().umount2(b".", MNT_DETACH), "detach the host's tree")
    os.chdir("/")
    _mount(None, "/", MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    drop = ["--reuid", drop_to, "--regid", drop_to, "--clear-groups"] if drop_to != "-" else []
    drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
    status.write(str(_run([setpriv, *drop, "--", sys.executable, *python_args], cwd="/tmp")))
    status.close()


def _run(argv: list[str], cwd: str | None = None) -> int:
    """Run a program to its end; its exit status, negative for a signal (fork and exec: `subprocess` would cost
    every program its import)."""
    pid = os.fork()
    if pid == 0:
        try:
            if cwd:
                os.chdir(cwd)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _runtime_paths() -> list[str]:
    """What the interpreter needs, at the same paths: the system's programs and libraries and this Python's prefix
    (the launcher runs under the base interpreter, so sys.prefix is its prefix)."""
    paths = [p for p in SYSTEM_PATHS if os.path.lexists(p)]
    for path in (sys.prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in paths):
            paths.append(path)
    return paths


def _bind(source: str, target: str, flags: int) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(source, target, MS_BIND)
    # A user namespace may not clear flags the host set on the source's mount (noexec, atime): keep them.
    host = os.statvfs(source).f_flag
    kept = host & (MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)  # statvfs's ST_ bits equal these MS_ bits
    kept |= MS_RELATIME if host & os.ST_RELATIME else 0
    _mount(None, target, MS_REMOUNT | MS_BIND | flags | kept)


def _mount(source: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None) -> None:
    result = _libc().mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data))
    _check(result, f"mount {target}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sandbox: cannot {what}: {os.strerror(errno)}")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


if __name__ == "__main__":  # the launcher, started by `_command`
    _launch(sys.argv[1], sys.argv[2], sys.argv[3:])
