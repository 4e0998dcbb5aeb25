"""
What a train.py run holds while it runs: out_dir's lock (one run per out_dir; formats/checkpoint.py's
RunLock), and how far it got, for the one line a Ctrl-C prints about what is kept on disk.
"""

import functools
import os

import torch

from formats.checkpoint import RunLock, remove_stale_temps


class Run:
    """What this process's run holds beyond main's locals: the lock that keeps it the only run in its
    out_dir (formats/checkpoint.py's RunLock, released however main ends), and how far it got, for
    the one line a Ctrl-C prints."""

    def __init__(self):
        self.lock, self.ckpt_path, self.iter_num, self.saved_iter = None, None, None, None
        self.found = None  # the identity of the ckpt.pt out_dir held when this run began

    def start(self, out_dir, ckpt_path):
        """Take out_dir's lock (a second run there refuses at once), then remove the partial
        checkpoints that killed writers left; under torchrun only rank 0, the writer, locks."""
        self.release()
        self.__init__()
        if int(os.environ.get('RANK', 0)) == 0:
            self.lock = RunLock(out_dir).acquire()
            if self.lock.notice:
                print(self.lock.notice)
            for tmp in remove_stale_temps(ckpt_path):
                print(f"removed {tmp}, a partial checkpoint left by an interrupted write")
        self.ckpt_path, self.found = ckpt_path, file_identity(ckpt_path)

    def progress(self, iter_num, saved_iter):  # iterations done, and the one ckpt_path holds
        self.iter_num, self.saved_iter = iter_num, saved_iter

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def kept_iteration(self):
        """The iteration of the checkpoint this run owns at ckpt_path (one it wrote, or the one it
        resumed), read from the file itself: a Ctrl-C can land between the rename that puts a new
        checkpoint in place and any bookkeeping after it. None if it owns none."""
        now = file_identity(self.ckpt_path)
        if now is None or (now == self.found and self.saved_iter is None):
            return None  # none, or still the earlier run's
        try:  # mmap: the small header is read, not the weights
            return torch.load(self.ckpt_path, mmap=True, weights_only=True)['iter_num']
        except Exception:
            return self.saved_iter

    def interrupted(self, where=''):
        """The line a Ctrl-C prints: where it landed and what is on disk."""
        if where or self.iter_num is None:
            return (
                f"interrupted in {where or 'the setup, before training began'}: nothing was written"
            )
        kept = self.kept_iteration()
        if kept is not None:
            kept = (
                f"the last checkpoint (iteration {kept}) is kept at {self.ckpt_path}: "
                "resume with --init_from=resume"
            )
        elif self.found is not None:
            kept = f"no checkpoint was written ({self.ckpt_path} is still the earlier run's)"
        else:
            kept = "no checkpoint was written"
        return f"interrupted at iteration {self.iter_num}; {kept}"


def file_identity(path):
    """What tells one file at `path` from another written there since (a rename gives a new inode)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


RUN = Run()


def releases_run_lock(main):
    """main, with out_dir's lock released however it ends (return, error, Ctrl-C)."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        finally:
            RUN.release()

    return run
