"""A process that joined a process group leaves it destroyed before interpreter teardown."""

import subprocess
import sys
import textwrap

# Registered first, so it runs last (atexit is LIFO): it sees what teardown will see.
PROBE = textwrap.dedent(
    """
    import atexit, os
    import torch.distributed as dist
    atexit.register(lambda: print("alive at teardown:", dist.is_initialized()))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo")
    from dermae.engine.distributed import release_process_group_at_exit
    release_process_group_at_exit()
    release_process_group_at_exit()  # asked twice, destroyed once without error
    print("alive after setup:", dist.is_initialized())
    """
)


def test_the_process_group_is_destroyed_at_exit_not_left_to_teardown():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["alive after setup: True", "alive at teardown: False"]
