# -*- coding: utf-8 -*-
# Copyright: xen2kvm developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of xen2kvm.migration.xva_convert: the conversion runs as an async job on its host
while this plugin prints one progress line every few seconds (``[VM] convert 42% 310/740 MiB
85 MiB/s ETA 0:05``), and returns the module's own result at the end.

A conversion takes minutes to hours. Run plainly, a task shows nothing until it ends; run with
``async``/``poll``, it shows nothing either, and ``until``/``retries`` on ``async_status`` fills the
screen with ``FAILED - RETRYING``. Here the user sets nothing: the module writes its status file
(one of ours, in a private directory on the target, when the task names none), and this plugin
reads it, together with the job's result file, with one cheap shell command per poll.

Check mode runs the module directly (it only reads ova.xml). A task with ``async`` and ``poll: 0``
gets its job id, as with any module. A task with ``async`` and ``poll`` gets the progress lines
within its time limit, then the task executor collects the finished job as usual.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shlex
import signal
import threading
import time

from ansible.errors import AnsibleError
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.utils.vars import merge_hash

from ansible_collections.xen2kvm.migration.plugins.module_utils._xva.progress import progress_line, read_status

display = Display()

# A line at most this often; polls in between only look whether the job ended.
LINE_EVERY = 5.0
# Polls start quick, so a short conversion is not held up, and settle at this interval.
POLL_INTERVALS = (0.2, 0.3, 0.5, 1.0, 2.0, 2.5)
# The async limit when the task sets none: the conversion itself has no limit.
JOB_LIMIT = 7 * 24 * 3600
# Unreachable target for this long: give up following the job.
LOST_CONTACT_AFTER = 600.0
# When the task is cut short: how long to wait for the stopped module to end, so its job file
# can be removed.
STOP_WAIT = 10.0
# What ansible-playbook sends its workers on Ctrl-C or when it is terminated.
STOP_SIGNALS = ("SIGINT", "SIGTERM")
_JOB_MARK = "--xen2kvm-job-file--"
_ASYNC_KEYS = ("ansible_job_id", "started", "finished", "results_file")


class ActionModule(ActionBase):

    _supports_check_mode = True
    _supports_async = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        if self._runs_without_progress():
            return self._run_as_any_module(result, task_vars)
        try:
            return self._run_with_progress(result, task_vars)
        except _Interrupted as exc:
            # the job is stopped: now the worker ends the way ansible-core's own handler ends it
            os.kill(os.getpid(), exc.signum)
            raise AnsibleError("xva_convert: interrupted by %s" % signal.Signals(exc.signum).name) from None

    def _runs_without_progress(self):
        fire_and_forget = self._task.async_val and not self._task.poll
        return bool(self._task.check_mode or fire_and_forget or self._connection.has_native_async)

    def _run_as_any_module(self, result, task_vars):
        """What ansible.builtin.normal does."""
        wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
        result = merge_hash(result, self._execute_module(task_vars=task_vars, wrap_async=wrap_async))
        if not wrap_async:
            self._remove_tmp_path(self._connection._shell.tmpdir)
        return result

    def _run_with_progress(self, result, task_vars):
        started = time.monotonic()
        task_limit = self._task.async_val
        args = dict(self._task.args)
        own_dir = None
        with _signals_raise():
            try:
                if not args.get("status_file"):
                    own_dir = self._make_status_dir()
                    args["status_file"] = posixpath.join(own_dir, "status.json")
                job = self._start_job(args, task_vars, task_limit or JOB_LIMIT)
                if job.get("failed") or not job.get("results_file"):
                    job["changed"] = False  # _execute_module marks every async launch changed
                    return merge_hash(result, job)
                label = task_vars.get("inventory_hostname") or self._task.get_name()
                # the module expands ~ in a path option; a quoted path in a shell command is not
                status_file = self._remote_expand_user(args["status_file"])
                follower = _JobFollower(self, label, status_file, job["results_file"], started)
                try:
                    follower.follow(task_limit or JOB_LIMIT)
                except BaseException as exc:  # a task timeout or an interrupt: the job must not run on, unseen
                    follower.stop(signal.Signals(exc.signum).name if isinstance(exc, _Interrupted) else "SIGTERM")
                    raise
                if task_limit:  # the task executor collects the finished job and removes its file
                    return merge_hash(result, job)
                return merge_hash(result, follower.final_result(task_vars))
            finally:
                self._remove_quietly([own_dir] if own_dir else [])

    def _start_job(self, args, task_vars, limit):
        """Launch the module through async_wrapper, as the task executor does for ``async:``."""
        saved = self._task.async_val
        self._task.async_val = limit
        try:
            return self._execute_module(module_args=args, task_vars=task_vars, wrap_async=True)
        finally:
            self._task.async_val = saved

    def _make_status_dir(self):
        """A private directory owned by the user the module runs as (after become), so the module
        can write its status there and nobody else can place a file under that name."""
        cmd = 'umask 077 && mktemp -d "${TMPDIR:-/tmp}/xen2kvm-progress.XXXXXXXXXX"'
        res = self._low_level_execute_command(cmd, sudoable=True)
        lines = (res.get("stdout") or "").strip().splitlines()
        if res.get("rc") != 0 or not lines or not lines[-1].startswith("/"):
            raise AnsibleError("xva_convert: could not create a directory for the progress status on the target: %s"
                               % ((res.get("stderr") or res.get("stdout") or "").strip() or "rc %s" % res.get("rc")))
        return lines[-1].strip()

    def _remove_quietly(self, paths):
        if not paths:
            return
        cmd = "rm -rf -- %s" % " ".join(shlex.quote(path) for path in paths)
        try:
            res = self._low_level_execute_command(cmd, sudoable=True)
        except AnsibleError as exc:
            display.warning("xva_convert: could not remove %s: %s" % (" ".join(paths), exc))
            return
        if res.get("rc") != 0:
            display.warning("xva_convert: could not remove %s: %s" % (" ".join(paths), (res.get("stderr") or "").strip()))


class _Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_raise():
    """Ctrl-C makes ansible-playbook signal its workers, and a worker then signals its process
    group: a module run directly gets the signal and removes its temporary files.  The async job
    is a process group of its own, so while it is followed the signal becomes ``_Interrupted``
    here, the job is stopped, and the signal is delivered again to ansible-core's handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def interrupted(signum, _frame):
        for number in previous:  # a second signal must not cut the stop short
            signal.signal(number, signal.SIG_IGN)
        raise _Interrupted(signum)

    for name in STOP_SIGNALS:
        number = getattr(signal, name)
        previous[number] = signal.signal(number, interrupted)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _JobFollower:
    """Polls one running xva_convert job: prints its progress, tells when it ended."""

    def __init__(self, action, label, status_file, results_file, started):
        self.action = action
        self.label = label
        self.status_file = status_file
        self.results_file = results_file
        self.status = None
        self.started = started

    def follow(self, limit):
        """Until the job ended (or well past its time limit, when async_wrapper should have
        killed it); a line every LINE_EVERY seconds from the start of the task."""
        next_line = self.started + LINE_EVERY
        last_contact = time.monotonic()
        deadline = self.started + limit + 60
        polls = 0
        while True:
            interval = POLL_INTERVALS[min(polls, len(POLL_INTERVALS) - 1)]
            time.sleep(max(min(interval, next_line - time.monotonic()), 0.05))
            polls += 1
            now = time.monotonic()
            try:
                finished = self._peek()
            except AnsibleError as exc:
                if now - last_contact > LOST_CONTACT_AFTER:
                    raise AnsibleError("xva_convert: lost contact with the host for %d s while following the "
                                       "conversion (%s); it may still be running there (job file %s)"
                                       % (now - last_contact, exc, self.results_file)) from exc
                display.vvv("xva_convert: progress poll failed, retrying: %s" % exc)
                continue
            last_contact = now
            if finished or now > deadline:
                return
            if now >= next_line:
                display.display(progress_line(self.label, self.status, now - self.started))
                next_line = max(next_line + LINE_EVERY, now + LINE_EVERY / 2)

    def _peek(self):
        """Reads the status file and the job file in one command; True when the job ended."""
        cmd = "cat -- %s 2>/dev/null; echo; echo %s; cat -- %s 2>/dev/null || echo '{}'" % (
            shlex.quote(self.status_file), _JOB_MARK, shlex.quote(self.results_file))
        res = self.action._low_level_execute_command(cmd, sudoable=True)
        out = res.get("stdout") or ""
        if _JOB_MARK not in out:
            raise AnsibleError("rc %s: %s" % (res.get("rc"), (res.get("stderr") or out).strip()[-500:]))
        status_text, _mark, job_text = out.partition(_JOB_MARK)
        self.status = read_status(status_text.strip()) or self.status
        job = read_status(job_text.strip())
        # async_wrapper writes {"started": ...} first and the module's result (no "started") in its
        # place, each by a rename; a job file that is gone reads as {} and async_status says so.
        return job is not None and "started" not in job

    def final_result(self, task_vars):
        """The module's result, read by async_status like any async task's, and the job file removed."""
        action = self.action
        jid = posixpath.basename(self.results_file)
        try:
            final = action._execute_module(module_name="ansible.legacy.async_status", task_vars=task_vars,
                                           module_args={"jid": jid, "mode": "status",
                                                        "_async_dir": posixpath.dirname(self.results_file)})
        finally:
            action._remove_tmp_path(action._connection._shell.tmpdir)
        if final.get("finished"):
            action._remove_quietly([self.results_file])
        elif not final.get("failed"):
            return dict(final, failed=True, msg="xva_convert: the job %s was reported finished, but async_status says "
                                                "it is not" % jid)
        for key in _ASYNC_KEYS:
            final.pop(key, None)
        return self._explain_wrapper_failure(final)

    def _explain_wrapper_failure(self, final):
        """async_wrapper's own failure records (module killed, no JSON) get the message a
        synchronous run would give, plus the last progress seen."""
        last = progress_line(self.label, self.status) if self.status else "none"
        if final.get("msg") == "Timeout exceeded" and "child_pid" in final:
            final["msg"] = "xva_convert did not finish within the task's async limit and was killed; last progress: %s" % last
        elif final.get("failed") and "cmd" in final and ("data" in final or "outdata" in final):
            stdout = final.pop("data", None) or final.pop("outdata", None) or ""
            final.pop("data", None)
            final.pop("outdata", None)
            final.pop("cmd", None)
            stderr = final.pop("stderr", "") or ""
            final.pop("stderr_lines", None)
            final["msg"] = ("MODULE FAILURE: xva_convert ended without a result (killed, or it crashed); last progress: %s%s"
                            % (last, "; stderr: " + stderr.strip()[-1000:] if stderr.strip() else ""))
            final["module_stdout"] = stdout
            final["module_stderr"] = stderr
            # the error summary ansible-core made of async_wrapper's msg (a traceback of its own)
            # would be shown instead of ours
            final.pop("exception", None)
        elif not final.get("failed"):
            # a successful module's stray stderr is dropped by a synchronous run too
            final.pop("stderr", None)
            final.pop("stderr_lines", None)
        return final

    def stop(self, signame):
        """Best effort, while the task is being cut short: the signal makes the module remove its
        temporary files and fail, as it would when run directly; once the job ended, its file goes too."""
        try:
            ended = self._peek()
            pid = (self.status or {}).get("pid")
            if not ended and isinstance(pid, int) and pid > 1:
                self.action._low_level_execute_command("kill -%s %d" % (signame[3:], pid), sudoable=True)
                deadline = time.monotonic() + STOP_WAIT
                while not ended and time.monotonic() < deadline:
                    time.sleep(0.5)
                    ended = self._peek()
            if ended:
                self.action._remove_quietly([self.results_file])
            else:
                display.warning("xva_convert: the conversion job %s may still be running" % self.results_file)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            display.warning("xva_convert: could not stop the conversion job %s: %s" % (self.results_file, exc))
