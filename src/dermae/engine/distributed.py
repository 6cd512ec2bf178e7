"""Process-group lifetime under torchrun / `accelerate launch`.

Accelerate creates torch's process group but leaves destroying it to the program. A gloo
group still alive at interpreter shutdown can abort the process (SIGABRT, "terminate called
without an active exception") after all its work is done: 1 of 20 two-process CPU runs here
before this module, 0 of 40 after (`N=40 bash benchmarks/ddp_exit_repeat.sh`). So every entry
point that joins a group asks for it to be destroyed at exit. (Accelerate's own
`PartialState.destroy_process_group` is the same torch call, but needs a state object.)
"""

from __future__ import annotations

import atexit

import torch


def release_process_group() -> None:
    """Destroy torch's default process group if one is alive; a no-op otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def release_process_group_at_exit() -> None:
    """Destroy the process group while the interpreter is still whole. Idempotent."""
    atexit.unregister(release_process_group)  # registered once, however often it is asked
    atexit.register(release_process_group)
