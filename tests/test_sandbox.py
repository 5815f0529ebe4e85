"""The operating-system boundary of sandbox.run_program, attacked. Hand-written hostile programs run through
sandbox.run_programs (what eval.py calls) and once through eval.py itself, with the hostile code in a --data
file's `test` field. Nearly every attack first switches off the in-process audit hook through its own state
and proves it is off, so what is tested is the boundary, not the hook. Each outcome is checked from outside:
nothing written, no process left, no signal delivered, no connection accepted, no secret seen. Both ways into
the namespaces run: as root (a fresh unused uid) and through a user namespace (what a non-root evaluator
gets). The fallback without namespaces is tested for what it still holds, and for saying so. Linux, as root
(CI)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

import sandbox
import tasks
from conftest import ROOT, group_alive

BOUNDARIES = ["namespaces", "user-namespace"]
FILTERED = os.uname().machine in sandbox.SYSCALLS  # the seccomp filter exists for this architecture

# Switches the audit hook off from inside, through its own closure (its sets of refused events emptied, its
# path check replaced), then proves it is off: the hook refuses os.kill, which now goes through.
HOOK_OFF = '''
import gc, os, sys
hook = next(f for f in gc.get_objects() if type(f).__name__ == "function" and f.__name__ == "hook"
            and f.__code__.co_filename.endswith("main.py"))
for cell in hook.__closure__:
    if isinstance(cell.cell_contents, (set, dict)):
        cell.cell_contents.clear()
    elif callable(cell.cell_contents):
        cell.cell_contents = lambda *args: None
os.kill(os.getpid(), 0)
print("HOOK OFF", file=sys.stderr)
'''


def survivors(namespace):
    """Processes anywhere on this machine that live in the PID namespace `namespace` ("pid:[inode]")."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") == namespace:
                found.append(int(pid))
        except OSError:
            pass
    return found


def sleeping(nonce):
    """Processes running `sleep NONCE` (the programs below exec it to leave something behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\0")[:2] == [b"sleep", nonce.encode()]:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def attack_all(codes, boundary="namespaces", **kwargs):
    """Run HOOK_OFF + each code as eval.py does; check the hook was off in each and no process is left."""
    programs = [HOOK_OFF + c for c in codes]
    results = sandbox.run_programs(programs, allow_code_exec=True, boundary=boundary, **kwargs)
    for r in results:
        assert "HOOK OFF" in r["stderr_tail"], r["stderr_tail"]
        assert r["boundary"] == boundary
        if boundary != "limits":
            assert r["namespace"].startswith("pid:[") and survivors(r["namespace"]) == []
    return results


def attack(code, boundary="namespaces", **kwargs):
    return attack_all([code], boundary, **kwargs)[0]


def last_line(r):
    return r["stderr_tail"].strip().splitlines()[-1]


def error_type(r):
    """The exception the program died of ("OperationalError" for "sqlite3.OperationalError: ...")."""
    return last_line(r).split(":")[0].rsplit(".", 1)[-1]


@pytest.fixture
def visible():
    """A folder the program sees (inside the interpreter's installation, which it gets read-only), writable by
    everyone out here, holding a file writable by everyone: only the read-only mount stands in the way."""
    folder = tempfile.mkdtemp(prefix="sandbox_test_", dir=sys.prefix)
    os.chmod(folder, 0o777)
    with open(os.path.join(folder, "precious.txt"), "w") as f:
        f.write("data")
    os.chmod(os.path.join(folder, "precious.txt"), 0o666)
    yield folder
    shutil.rmtree(folder)


def snapshot(folder):
    """Names, sizes, modes, times and contents of what is in `folder`."""
    out = {}
    for name in sorted(os.listdir(folder)):
        st = os.lstat(os.path.join(folder, name))
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = (st.st_size, st.st_mode, st.st_mtime_ns, f.read())
    return out

# -----------------------------------------------------------------------------
# The file system: read-only except the scratch tmpfs, which is the program's alone


CTYPES = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
# {file}: the file writable by all, {new}: a new name beside it, {hidden}: a folder of ours out of its view
WRITES = {
    "open for append": "open({file!r}, 'a').write('x')",
    "create": "open({new!r}, 'w').write('x')",
    "os.open O_CREAT": "os.close(os.open({new!r}, os.O_WRONLY | os.O_CREAT))",
    "a folder out of view": "open({hidden!r} + '/evil.txt', 'w').write('x')",
    "sqlite URI filename": "import sqlite3\nsqlite3.connect('file:' + {new!r} + '?mode=rwc', uri=True)"
                           ".execute('create table t(a)')",
    "sqlite ATTACH DATABASE": "import sqlite3\nc = sqlite3.connect(':memory:')\n"
                              "c.execute('attach database ? as x', ({new!r},))\n"
                              "c.execute('create table x.t(a)')",
    "sqlite VACUUM INTO": "import sqlite3\nc = sqlite3.connect('/tmp/a.db')\nc.execute('create table t(a)')\n"
                          "c.commit()\nc.execute('vacuum into ?', ({new!r},))",
    "os.mkfifo": "os.mkfifo({new!r})",
    "os.mknod": "os.mknod({new!r})",
    "mkdir": "os.mkdir({new!r})",
    "symlink from the scratch": "os.symlink({file!r}, '/tmp/link')\nopen('/tmp/link', 'a').write('x')",
    "symlink into the folder": "os.symlink('/tmp', {new!r})",
    "hard link into the scratch": "os.link({file!r}, '/tmp/hard')\nopen('/tmp/hard', 'a').write('x')",
    "rename out": "os.rename({file!r}, '/tmp/stolen')",
    "rename in": "open('/tmp/x', 'w').write('x')\nos.rename('/tmp/x', {new!r})",
    "remove": "os.remove({file!r})",
    "chmod": "os.chmod({file!r}, 0o777)",
    "utime": "os.utime({file!r}, (0, 0))",
    "truncate": "os.truncate({file!r}, 0)",
    "setxattr": "os.setxattr({file!r}, 'user.x', b'1')",
    "/proc/self/root": "open('/proc/self/root' + {file!r}, 'a').write('x')",
    "/proc/1/root (the init's)": "open('/proc/1/root' + {file!r}, 'a').write('x')",
    "/proc/1/fd (the init's files)": "for fd in os.listdir('/proc/1/fd'):\n"
                                     "    os.write(os.open('/proc/1/fd/' + fd, os.O_WRONLY), b'exit 0\\n')",
    "/dev/shm": "open('/dev/shm/x', 'w').write('x')",
    "/proc/sys": "open('/proc/sys/kernel/hostname', 'w').write('x')",
    "/proc/sysrq-trigger": "open('/proc/sysrq-trigger', 'w').write('h')",
    "a name for the stderr file": "os.link('/proc/self/fd/2', {new!r}, follow_symlinks=True)",
    "remount read-write": CTYPES + "assert libc.mount(None, {folder!r}.encode(), None, 32 | 4096, None) == 0,"
                                   " OSError(ctypes.get_errno(), 'mount')",
    "own mount namespace": CTYPES + "assert libc.unshare(0x10000000 | 0x20000) == 0, "
                                    "OSError(ctypes.get_errno(), 'unshare')",
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_nothing_is_written_outside_the_scratch(boundary, visible, tmp_path):
    file, new = os.path.join(visible, "precious.txt"), os.path.join(visible, "new")
    before = snapshot(visible)
    codes = ["import os\n" + c.format(file=file, new=new, hidden=str(tmp_path), folder=visible)
             for c in WRITES.values()]
    results = attack_all(codes, boundary)
    errors = ("OSError", "PermissionError", "FileNotFoundError", "OperationalError", "AssertionError")
    wrong = {name: last_line(r) for name, r in zip(WRITES, results)
             if r["status"] != "failed" or error_type(r) not in errors}
    assert wrong == {}
    assert snapshot(visible) == before and os.listdir(tmp_path) == []


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_what_the_program_sees(boundary):
    """Its root: the system folders, the interpreter, /dev, /proc, /tmp; not this project, nor our /tmp."""
    name = f"sandbox-{uuid.uuid4().hex}"
    code = (f"import json, os, socket\nopen('/tmp/{name}', 'w').write('x')\n"
            "print(json.dumps(dict(cwd=os.getcwd(), root=os.listdir('/'), dev=sorted(os.listdir('/dev')), "
            "procs=[p for p in os.listdir('/proc') if p.isdigit()], host=socket.gethostname(), "
            "net=open('/proc/net/dev').read().split()[20::17], scratch=os.listdir('/tmp'), "
            "prefix=sys.prefix, writable=[f[4] for f in map(str.split, open('/proc/self/mountinfo')) "
            "if 'rw' in f[5].split(',')], "
            f"project=os.path.exists({ROOT!r} + '/sandbox.py'))), file=sys.stderr)\n")
    r = attack(code, boundary)
    seen = json.loads(r["stderr_tail"].splitlines()[-1])
    assert r["status"] == "passed" and seen["cwd"] == "/tmp" and name in seen["scratch"]
    assert seen["prefix"] == sys.prefix  # the evaluator's interpreter, venv included
    devices = {f"/dev/{d}" for d in ("null", "zero", "full", "random", "urandom")}
    assert set(seen["writable"]) == {"/tmp", *devices}  # every other mount read-only, submounts too
    tops = {d.split("/")[1] for d in (sys.prefix, sys.base_prefix)}  # where the interpreter lives
    assert set(seen["root"]) <= {*sandbox.SYSTEM_DIRS, "dev", "proc", "tmp", *tops}
    assert seen["dev"] == ["fd", "full", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"]
    assert len(seen["procs"]) <= 3 and seen["host"] == "sandbox" and seen["net"] == ["lo:"]
    assert not seen["project"] and not os.path.exists(f"/tmp/{name}")  # our /tmp was never its /tmp


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_runs_unprivileged(boundary):
    code = ("status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
            "print({k: status[k].split() for k in ('Uid', 'Gid', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', "
            "'CapAmb', 'NoNewPrivs', 'Seccomp')}, file=sys.stderr)\n"
            "os.setuid(0)\n")
    r = attack(code, boundary)
    seen = eval(r["stderr_tail"].splitlines()[1])  # noqa: S307 (the line after HOOK OFF, printed by us)
    assert r["status"] == "failed" and error_type(r) in ("PermissionError", "OSError")  # setuid(0) refused
    assert "0" not in seen["Uid"] + seen["Gid"]  # 65534 in a user namespace, a fresh unused uid as root
    assert all(int(seen[c][0], 16) == 0 for c in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))
    assert seen["NoNewPrivs"] == ["1"] and seen["Seccomp"] == (["2"] if FILTERED else seen["Seccomp"])


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_scratch_and_memory_are_bounded(boundary):
    fill = "for i in range(100):\n    open(f'/tmp/big{i}', 'wb').write(b'0' * (9 << 20))\n"  # 900 MB in all
    grab = "x = []\nwhile True:\n    x.append(bytearray(1 << 24))\n"
    full, memory = attack_all([fill, grab], boundary, memory_mb=256, timeout=20)
    assert full["status"] == "failed" and "No space left on device" in last_line(full)
    assert memory["status"] == "failed" and last_line(memory) == "MemoryError"

# -----------------------------------------------------------------------------
# Processes: none by default; when allowed, none outlives the check


def persist(nonce):
    """A program leaving a grandchild in a new session (setsid, double fork) that would run for a minute."""
    return ("import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{nonce}'])\n    os._exit(0)\n"
            "time.sleep(0.5)\n"
            "mine = [open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') if p.isdigit()]\n"
            f"print('RUNNING' if any('{nonce}' in c for c in mine) else 'NOT STARTED', file=sys.stderr)\n")


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_no_process_outlives_the_check(boundary):
    nonce = f"61.{uuid.uuid4().int % 10**9}"
    r = attack(persist(nonce), boundary, allow_fork=True)  # attack() also checks the namespace is empty
    assert r["status"] == "passed" and "RUNNING" in r["stderr_tail"] and sleeping(nonce) == []
    timed_out = attack(persist(nonce) + "while True:\n    pass\n", boundary, allow_fork=True, timeout=2)
    assert timed_out["status"] == "timeout" and sleeping(nonce) == []


@pytest.mark.parametrize("boundary", [*BOUNDARIES, "limits"])
def test_nothing_outlives_a_killed_evaluator(boundary, tmp_path):
    """The evaluator killed mid-run (SIGKILL: no clean-up of its own): the program goes with it."""
    nonce = f"63.{uuid.uuid4().int % 10**9}"
    script = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport sandbox\n"
              "sandbox.run_program(sys.argv[2], timeout=60, allow_code_exec=True, boundary=sys.argv[3])\n")
    code = HOOK_OFF + f"os.execv('/bin/sleep', ['sleep', '{nonce}'])\n"
    evaluator = subprocess.Popen([sys.executable, "-c", script, ROOT, code, boundary],
                                 env={**os.environ, "TMPDIR": str(tmp_path)})  # what it cannot clean up
    deadline = time.monotonic() + 60
    while not sleeping(nonce) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping(nonce), "the program never started"
    evaluator.kill()
    evaluator.wait()
    deadline = time.monotonic() + 10
    while sleeping(nonce) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sleeping(nonce) == []


@pytest.mark.parametrize("code", [
    "os.fork()",
    "os.posix_spawn('/bin/sleep', ['sleep', '60'], {})",
    CTYPES + "assert libc.syscall(57 if os.uname().machine == 'x86_64' else 220, 17, 0, 0, 0, 0) != -1 or "
             "(_ for _ in ()).throw(OSError(ctypes.get_errno(), 'raw fork'))",
    "import pty\npty.fork()",
])
def test_no_processes_by_default(code):
    r = attack(code)
    assert r["status"] == "failed" and error_type(r) in ("PermissionError", "OSError")
    if FILTERED and "pty" not in code:
        assert "[Errno 1]" in last_line(r)  # EPERM, from the seccomp filter


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fork_bomb(boundary):
    bomb = "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    refused = attack("os.fork()\n" + bomb, boundary)
    assert refused["status"] == "failed" and error_type(refused) == "PermissionError"
    if boundary == "user-namespace" and os.geteuid() == 0:
        return  # as root this path runs the program as uid 0 outside, which RLIMIT_NPROC does not bind
    t0 = time.monotonic()
    allowed = attack(bomb, boundary, allow_fork=True, max_procs=32, timeout=2)
    assert allowed["status"] == "timeout" and time.monotonic() - t0 < 2 + 10


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_timeout_kills_everything(boundary):
    code = ("import threading, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "threading.Thread(target=time.sleep, args=(100,)).start()\nwhile True:\n    pass\n")
    t0 = time.monotonic()
    r = attack(code, boundary, timeout=1)
    assert r["status"] == "timeout" and time.monotonic() - t0 < 1 + sandbox.SANDBOX_GRACE

# -----------------------------------------------------------------------------
# Reaching out: ports, local sockets, signals, secrets, the kernel


def host_address():
    """This machine's address on its default route (no packet is sent), else 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_no_connection_to_anything(boundary, visible):
    tcp = socket.create_server(("0.0.0.0", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix, abstract = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    path = os.path.join(visible, "service.sock")
    unix.bind(path)
    os.chmod(path, 0o777)
    abstract.bind(f"\0sandbox-test-{uuid.uuid4().hex}")
    for s in (tcp, udp, unix, abstract):
        s.setblocking(False)
    for s in (unix, abstract):
        s.listen()
    host_ip = host_address()
    port = tcp.getsockname()[1]
    tries = {
        "tcp 127.0.0.1": f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "tcp host address": f"socket.create_connection(({host_ip!r}, {port}), timeout=2)",
        "udp": "socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', "
               f"{udp.getsockname()[1]}))",
        "unix path": f"socket.socket(socket.AF_UNIX).connect({path!r})",
        "unix abstract": f"socket.socket(socket.AF_UNIX).connect({abstract.getsockname()!r})",
        "unix datagram pair": f"socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].connect({path!r})",
        "netlink": "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)",
    }
    results = attack_all([f"import socket\n{c}\n" for c in tries.values()], boundary)
    assert {n: r["status"] for n, r in zip(tries, results)} == {n: "failed" for n in tries}
    assert all(last_line(r).startswith(("OSError", "PermissionError", "TimeoutError")) for r in results)
    for s in (tcp, unix, abstract):
        with pytest.raises(BlockingIOError):
            s.accept()
    with pytest.raises(BlockingIOError):
        udp.recv(1)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_cannot_signal_the_evaluator(boundary):
    victim = subprocess.Popen(["sleep", "60"])
    received = []
    old = signal.signal(signal.SIGUSR1, lambda *a: received.append(a))
    try:
        code = (f"for pid in (os.getppid(), {os.getpid()}, {victim.pid}, 1):\n    try:\n"
                f"        os.kill(pid, signal.SIGUSR1 if pid == {os.getpid()} else signal.SIGKILL)\n"
                "    except OSError as e:\n        print('refused', pid, e, file=sys.stderr)\n"
                "os.kill(-1, signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)\n")
        r = attack("import signal\n" + code, boundary)
        time.sleep(0.2)
        assert r["status"] == "failed" and victim.poll() is None and received == []
    finally:
        signal.signal(signal.SIGUSR1, old)
        victim.kill()
        victim.wait()


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_no_secret_of_the_evaluator(boundary, monkeypatch, tmp_path):
    marker = "sandbox-secret-"
    monkeypatch.setenv("SANDBOX_TEST_TOKEN", marker + uuid.uuid4().hex)
    (tmp_path / "token").write_text(os.environ["SANDBOX_TEST_TOKEN"])  # readable by all, out of its view
    code = ("import glob\nfound = [k for k, v in os.environ.items() if " f"{marker!r} in v]\n"
            "for path in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline') + "
            f"[{str(tmp_path / 'token')!r}]:\n    try:\n        data = open(path, 'rb').read()\n"
            "    except OSError:\n        continue\n"
            f"    if {marker.encode()!r} in data:\n        found.append(path)\n"
            "print(sorted(os.environ), file=sys.stderr)\nassert not found, found\n")
    r = attack(code, boundary)
    assert r["status"] == "passed" and os.environ["SANDBOX_TEST_TOKEN"] not in r["stderr_tail"]
    assert set(eval(r["stderr_tail"].splitlines()[-1])) <= {*sandbox.PROGRAM_ENV, "LC_CTYPE"}  # noqa: S307


@pytest.mark.skipif(not FILTERED, reason="the seccomp filter exists for x86-64 and arm64 only")
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_kernel_interfaces_refused(boundary):
    """Raw system calls the filter refuses: ptrace of the init, a user namespace, keyrings, io_uring, bpf,
    System V shared memory (1 GiB that RLIMIT_AS would not see), the x32 ABI, vfork; clone3 is ENOSYS. Each
    returns -1 with the expected errno."""
    nr = sandbox.SYSCALLS[os.uname().machine][1]
    calls = {"ptrace": (nr["ptrace"], 16, 1, 0, 0), "unshare": (nr["unshare"], 0x10000000),
             "keyctl": (nr["keyctl"], 0, -3), "io_uring_setup": (nr["io_uring_setup"], 8, 0),
             "bpf": (nr["bpf"], 0, 0, 0), "clone3": (nr["clone3"], 0, 0),
             "setns": (nr["setns"], 0, 0), "process_vm_readv": (nr["process_vm_readv"], 1, 0, 0, 0, 0, 0),
             "shmget": (nr["shmget"], 0, 1 << 30, 0o1600), "msgget": (nr["msgget"], 0, 0o1600),
             "semget": (nr["semget"], 0, 1, 0o1600)}
    if "vfork" in nr:
        calls.update(vfork=(nr["vfork"],), x32_fork=(0x40000000 | 57,))
    code = (CTYPES + "libc.syscall.restype = ctypes.c_long\nout = {}\n"
            f"for name, args in {calls!r}.items():\n"
            "    out[name] = (libc.syscall(*[ctypes.c_long(a) for a in args]), ctypes.get_errno())\n"
            "print(out, file=sys.stderr)\n")
    r = attack(code, boundary)
    out = eval(r["stderr_tail"].splitlines()[-1])  # noqa: S307
    assert r["status"] == "passed"
    assert out == {name: (-1, 38 if name == "clone3" else 1) for name in calls}

# -----------------------------------------------------------------------------
# Without namespaces (the fallback): less, and said so


def test_fallback_still_limits():
    """boundary "limits": with the hook off, the seccomp filter still refuses processes and every socket, the
    environment is still built from nothing, memory and time are still limited, the group still killed."""
    codes = ["os.fork()", "import socket\nsocket.create_connection(('127.0.0.1', 9))",
             "print(sorted(os.environ), file=sys.stderr)",
             "x = []\nwhile True:\n    x.append(bytearray(1 << 24))", "while True:\n    pass"]
    fork, connect, env, memory, loop = attack_all(codes, "limits", memory_mb=256, timeout=2)
    if FILTERED:
        assert "[Errno 1]" in last_line(fork) and "[Errno 1]" in last_line(connect)  # EPERM, seccomp
    assert env["status"] == "passed"
    assert set(eval(last_line(env))) <= {*sandbox.PROGRAM_ENV, "LC_CTYPE"}  # noqa
    assert last_line(memory) == "MemoryError"
    assert loop["status"] == "timeout" and group_alive(loop["pid"]) == []


def test_fallback_is_announced_once():
    """An evaluator whose own seccomp filter forbids unshare(2), as a locked-down container does: the probe
    fails, one loud warning goes to stderr, and programs still run (with limits only)."""
    script = ("import json, os, sys\nsys.path.insert(0, sys.argv[1])\nimport sandbox\n"
              "sandbox._libc('prctl', sandbox.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)\n"
              "sandbox._install_seccomp(sandbox.seccomp_filter(os.uname().machine, True, "
              "sockets=(1, 2, 10, 16), denied=('unshare',)))\n"
              "rs = sandbox.run_programs(['assert 1', 'assert 0', 'assert 2'], allow_code_exec=True)\n"
              "rs += sandbox.run_programs(['assert 3'], allow_code_exec=True)\n"
              "print(json.dumps([r['status'] for r in rs] + [rs[0]['boundary'], sandbox.code_boundary()]))\n")
    if not FILTERED:
        pytest.skip("needs the seccomp filter to deny unshare(2) to the evaluator")
    out = subprocess.run([sys.executable, "-c", script, ROOT], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout) == ["passed", "failed", "passed", "passed", "limits", "limits"]
    assert out.stderr.count("WARNING") == 1 and "WITHOUT an operating-system boundary" in out.stderr
    assert "unshare" in out.stderr  # the reason


def test_this_machine_has_the_boundary():
    """Linux with namespaces (CI runs as root on such a machine): the probe succeeds, nothing is announced."""
    assert sandbox.code_boundary() == "namespaces"

# -----------------------------------------------------------------------------
# Through eval.py: the opt-in, its refusals, and hostile code in a --data file's `test` field


def eval_py(*args, env=None):
    return subprocess.run([sys.executable, "eval.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_code_tasks_refused_without_the_opt_in(tmp_path):
    """One line, before any model loads (the model named here does not exist), not a 0 % score."""
    assert tasks.code_exec_refusal("gsm8k", False) is None and tasks.code_exec_refusal("mbpp", True) is None
    assert "--allow-code-exec" in tasks.code_exec_refusal("mbpp", False)
    out = eval_py("--task", "humaneval", "--data", str(tmp_path / "a.jsonl"),
                  "--model", str(tmp_path / "nope"))
    refusal = tasks.code_exec_refusal("humaneval", False)
    assert out.returncode != 0 and out.stdout == "" and out.stderr.strip() == refusal


def test_a_log_scored_without_the_opt_in_is_not_resumed(tmp_path):
    row = {"task_id": "t/0", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "    return 1",
           "test": "def check(f):\n    assert f() == 1\n"}
    (tmp_path / "data.jsonl").write_text(json.dumps(row) + "\n")
    old = {"setting": "steps=8", "id": "t/0", "key": "0" * 16, "output": "", "extracted": "",
           "rule": "not_run", "correct": False, "nfe": 8, "tokens": 0, "seconds": 0.0}  # as logged before
    (tmp_path / "log.jsonl").write_text(json.dumps(old) + "\n")
    assert tasks.scored_without_exec("humaneval", old) and not tasks.scored_without_exec("gsm8k", old)
    out = eval_py("--task", "humaneval", "--data", str(tmp_path / "data.jsonl"), "--gen-length", "8",
                  "--block-length", "8", "--samples", str(tmp_path / "log.jsonl"), "--allow-code-exec")
    assert out.returncode != 0 and "line 1: scored without running its program" in out.stderr.splitlines()[-1]
    assert "Traceback" not in out.stderr and (tmp_path / "log.jsonl").read_text() == json.dumps(old) + "\n"


def test_hostile_test_field_through_eval_py(tmp_path, visible):
    """The whole chain as a user runs it: the hostile code is the `test` of a HumanEval-format record (the
    model's completion lands inside a string, so whatever it writes, the test code runs). It switches the hook
    off and tries to write, fork, connect, signal and read a secret; it asserts, inside, that each attempt
    failed, so it passes only if it ran to its end with nothing escaping. Outside nothing may change."""
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    victim = subprocess.Popen(["sleep", "60"])
    secret, nonce = f"sandbox-secret-{uuid.uuid4().hex}", f"62.{uuid.uuid4().int % 10**9}"
    target = os.path.join(visible, "precious.txt")
    before = snapshot(visible)
    hostile = HOOK_OFF + f"""
import signal, socket, sqlite3
escaped = []
def attempt(name, action):
    try:
        action()
        escaped.append(name)
    except OSError:
        pass
    except sqlite3.OperationalError:
        pass
attempt("write", lambda: open({target!r}, "a").write("pwned"))
attempt("sqlite", lambda: sqlite3.connect(":memory:").execute("attach database ? as x", ({target!r} + "x",)))
attempt("mkfifo", lambda: os.mkfifo({visible!r} + "/fifo"))
attempt("fork", lambda: os.fork() or os.setsid() or os.execv("/bin/sleep", ["sleep", "{nonce}"]))
attempt("connect", lambda: socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]}), timeout=2))
attempt("signal", lambda: os.kill({victim.pid}, signal.SIGKILL))
attempt("signal pytest", lambda: os.kill({os.getpid()}, signal.SIGKILL))
if any({secret[:15]!r} in v for v in os.environ.values()):
    escaped.append("secret")
assert not escaped, escaped
"""
    record = {"task_id": "hostile/0", "prompt": "NOTE = r'''\n", "entry_point": "zz_entry",
              "canonical_solution": "", "test": "'''\n" + hostile + "\ndef zz_entry():\n    pass\n\n"
                                                "def check(f):\n    pass\n"}
    (tmp_path / "hostile.jsonl").write_text(json.dumps(record) + "\n")
    try:
        out = eval_py("--task", "humaneval", "--data", str(tmp_path / "hostile.jsonl"), "--limit", "1",
                      "--gen-length", "8", "--block-length", "8", "--samples", str(tmp_path / "log.jsonl"),
                      "--allow-code-exec", env={"SANDBOX_TEST_TOKEN": secret})
        assert out.returncode == 0, out.stderr[-2000:]
        (row,) = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
        assert row["rule"] == "passed" and "HOOK OFF" in row["extracted"]  # it ran to its end, hook off
        assert victim.poll() is None and snapshot(visible) == before and sleeping(nonce) == []
        with pytest.raises(BlockingIOError):
            tcp.accept()
    finally:
        victim.kill()
        victim.wait()


def test_bench_reports_what_the_boundary_costs():
    """bench.py sandbox times trivial programs through the boundary eval.py uses, and every one must pass:
    a boundary that broke plain programs would make the benchmark fail, not report a speed."""
    out = subprocess.run([sys.executable, "bench.py", "sandbox", "--sandbox-programs", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout.strip().splitlines()[-1])["rows"]
    assert [r["workers"] for r in rows] == [1, 4]
    assert all(r["boundary"] == sandbox.code_boundary() and r["sandbox_ms"] > 0 < r["bare_ms"] for r in rows)
