"""
train.py checkpoints: written atomically, read with weights_only=True (a pickle that would run code is
refused), and load_model, which gives a GPT from a checkpoint or from GPT-2 weights.
"""

import contextlib
import errno
import os
import shutil
import signal
import threading
import time
from dataclasses import fields

import torch

from formats.huggingface import HF_MODELS
from model import GPT, GPTConfig


def load_model(path, device="cpu"):
    """A model from a train.py checkpoint (with its full weights), or a GPT-2 name/directory.
    Returns (model, ckpt); ckpt is {} for GPT-2 weights."""
    if os.path.isdir(path) or path in HF_MODELS:
        return GPT.from_pretrained(path), {}
    ckpt = read_checkpoint(path, device)
    if "model_args" not in ckpt or "model" not in ckpt:
        raise ValueError(
            f"{path}: not a full-model checkpoint of this project (no 'model_args'/'model'); "
            "adapter checkpoints need their base: see adapters.py"
        )
    known = {f.name for f in fields(GPTConfig)}
    model = GPT(GPTConfig(**{k: v for k, v in ckpt["model_args"].items() if k in known}))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise ValueError(
            f"{path}: its weights do not fit its own model_args (a damaged or edited checkpoint)"
        ) from None
    return model.to(device), ckpt


def os_error_reason(e):
    """The real cause of an OSError in words and by name: 'No space left on device (ENOSPC)',
    'Read-only file system (EROFS)', 'Not a directory (ENOTDIR)'... (a full disk is called full only
    when the system says so, never guessed from the free space)."""
    name = errno.errorcode.get(e.errno) if isinstance(getattr(e, "errno", None), int) else None
    text = e.strerror or str(e).splitlines()[0][:120] or type(e).__name__
    if name in ("ENOSPC", "EDQUOT"):
        return f"{text} ({name}): the disk is full"
    return f"{text} ({name})" if name else text


def write_error(e, path):
    """One line for an OSError met while writing `path`: the file it names (or path) and its cause."""
    return f"could not write {getattr(e, 'filename', None) or path}: {os_error_reason(e)}"


def temp_path(path):
    """Where `path` is written before its atomic rename: a name of this process's own, so two writers
    never share (and never rename away) each other's half-written file."""
    return f"{path}.{os.getpid()}.tmp"


@contextlib.contextmanager
def noting_ctrl_c():
    """Yields a list that a Ctrl-C (SIGINT) arriving inside the block appends to before it raises
    KeyboardInterrupt as usual: the caller can tell an interrupted write from a failed one even when
    C++ code (torch.save's writer) catches the KeyboardInterrupt and raises its own error instead."""
    noted = []
    # only where Ctrl-C raises KeyboardInterrupt now (not where it is ignored or handled otherwise);
    # signal handlers can be set from the main thread only
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield noted
        return

    def on_sigint(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def write_checkpoint(obj, path):
    """torch.save to a temporary file of this process, then an atomic rename: a crash, a full disk or
    a Ctrl-C mid-write never destroys the last good checkpoint at `path`, and leaves no partial file."""
    tmp = temp_path(path)
    try:
        with noting_ctrl_c() as ctrl_c:
            # a file of ours: a write error keeps its errno (ENOSPC, EROFS...)
            with open(tmp, "wb") as f:
                torch.save(obj, f)
            os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a write error as "file write failed"...
        partial = os.path.exists(tmp)
        if partial:
            os.remove(tmp)
        if ctrl_c:  # torch's writer turned the Ctrl-C raised inside it into a RuntimeError
            raise KeyboardInterrupt from None
        folder = os.path.dirname(os.path.abspath(path))
        torch_write = any(s in str(e) for s in ("unexpected pos", "file write failed"))
        if isinstance(e, OSError):
            why = os_error_reason(e)
        elif torch_write and shutil.disk_usage(folder).free < 64 * 2**20:  # torch hid the errno
            why = f"disk full ({shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {folder})"
        else:
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        keep = (
            f"the previous {path} is untouched"
            if os.path.exists(path)
            else "no checkpoint was written"
        )
        removed = f" and the partial {tmp} was removed" if partial else ""
        raise RuntimeError(f"could not write {path}: {why}; {keep}{removed}") from None
    except BaseException:  # Ctrl-C (KeyboardInterrupt) mid-write: no partial file either
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temps(path):
    """Remove the partial checkpoints a killed writer left beside `path` (path.tmp, path.<pid>.tmp
    of a process that is gone); a living writer's file is left alone. Returns what was removed."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    for f in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not (f.startswith(name + ".") and f.endswith(".tmp")):
            continue
        pid = f[len(name) + 1 : -len(".tmp")]
        if pid == "" or (pid.isdigit() and not pid_alive(int(pid))):
            os.remove(os.path.join(folder, f))
            removed.append(os.path.join(os.path.dirname(path), f))
    return removed


def pid_alive(pid):
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class RunLock:
    """One run per folder: an exclusive lock (fcntl.flock) on folder/<name>, a file holding the
    holder's PID, taken before any work and held until the run ends in any way. The kernel drops a
    flock when its process dies, even by kill -9, so a lock file left by a dead run is simply taken
    over (with a notice); a second run while the first lives refuses at once, naming its PID.
    The folder is created if need be, and removed again on release if the run left nothing in it."""

    def __init__(self, folder, name="train.lock", what="--out_dir"):
        folder = folder or "."  # out_dir='' is the current folder
        self.folder, self.path, self.what = folder, os.path.join(folder, name), what
        self.fd, self.made, self.notice = None, False, None

    def acquire(self):
        import fcntl  # POSIX (Linux, macOS)

        self.made = not os.path.isdir(self.folder)
        try:
            os.makedirs(self.folder, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = self._pid(fd, wait=True)
                    os.close(fd)
                    raise RuntimeError(
                        f"{self.folder} is in use by another run (PID {holder or '?'}, holding "
                        f"{self.path}): wait for it to end, or pass another {self.what}"
                    ) from None
                try:  # the holder may have removed the file as we opened it: then lock the new one
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
        except OSError as e:
            self._remove_folder()
            raise OSError(write_error(e, self.path)) from None
        except BaseException:
            self._remove_folder()
            raise
        self.fd, old = fd, self._pid(fd)
        if old and old != os.getpid():
            self.notice = (
                f"took over {self.path} from PID {old}, which ended without releasing it (killed?)"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    @staticmethod
    def _pid(fd, wait=False):
        """The PID written in the lock file (the holder writes it just after locking: wait a moment)."""
        for _ in range(20 if wait else 1):
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text.isdigit():
                return int(text)
            if wait:
                time.sleep(0.05)
        return None

    def release(self):
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: a waiting run then locks a fresh file
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_folder()

    def _remove_folder(self):
        if self.made and os.path.isdir(self.folder) and not os.listdir(self.folder):
            os.rmdir(self.folder)  # a run refused before it wrote anything leaves no empty folder
        self.made = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True (tensors and plain Python only: a pickle that would run code
    is refused), every failure turned into one line."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no checkpoint at {path}: run train.py first, or give a GPT-2 name or directory"
        )
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(e).__name__}); only plain tensors are accepted"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a checkpoint of this project (not a dict)")
    return ckpt


def check_resumable(ckpt, path):
    """Refuse, in one line naming the field, a checkpoint that train.py could not continue: every
    field a resumed run reads, of the right kind (a dict from elsewhere, or an edited one)."""
    nothing = "nothing to resume (start a new run with another --out_dir)"
    kinds = {
        "config": dict,
        "optimizer": dict,
        "iter_num": int,
        "best_val_loss": (int, float),
        "rng": dict,
    }
    if "model" in ckpt:
        kinds.update(model=dict, model_args=dict)
    elif "adapter" in ckpt:
        kinds.update(adapter=dict, base=dict)
    else:
        raise ValueError(
            f"{path} holds neither 'model' nor 'adapter': not a train.py checkpoint, {nothing}"
        )
    for key, kind in kinds.items():
        if key not in ckpt:
            raise ValueError(f"{path} has no {key!r}: not a checkpoint train.py wrote, {nothing}")
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            raise ValueError(
                f"{path}: {key!r} is a {type(ckpt[key]).__name__}, not what train.py writes there, {nothing}"
            )
    for key in ("torch", "data"):
        if key not in ckpt["rng"]:
            raise ValueError(
                f"{path} has no 'rng' {key!r} state: not a checkpoint train.py wrote, {nothing}"
            )
    if "adapter" in ckpt and not {"path", "fingerprint"} <= set(ckpt["base"]):
        raise ValueError(f"{path}: its 'base' names no path and fingerprint, {nothing}")
