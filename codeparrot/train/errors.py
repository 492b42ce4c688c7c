"""How a training run ends when it does not finish: stopped for preemption, or failed."""

from __future__ import annotations

from codeparrot.errors import CodeParrotError

# 128 + SIGTERM, what a process killed by SIGTERM reports; schedulers read it as "stopped, not failed".
PREEMPTED_EXIT_CODE = 143


class Preempted(CodeParrotError):
    """A termination signal or preemption notice stopped the run after writing a checkpoint. Resumable."""

    exit_code = PREEMPTED_EXIT_CODE


class Diverged(CodeParrotError):
    """The loss or gradient norm stopped being finite: the run stops, the last good checkpoint stays."""


class TrainingFailed(CodeParrotError):
    """The training process exited with an error; the message carries the tail of its log."""
