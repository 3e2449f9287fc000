"""A quick exit for the ``sdbatch`` process once its work is done and on disk.

When the interpreter shuts down it runs the cyclic garbage collector over everything still alive. After torch,
transformers and diffusers are loaded that is millions of objects: about 0.8 s on a 2-core CPU
(``benchmarks/cpu_overhead.py``), a tenth of a short batch, spent freeing memory the OS takes back anyway.
"""

from __future__ import annotations

import gc


def skip_exit_collection() -> None:
    """Call once, just before the process exits, so that shutdown does not walk the heap.

    ``gc.freeze()`` moves every live object to the permanent generation, which the collections run at shutdown
    leave alone. ``atexit`` handlers (Ray's shutdown among them) and stream flushing still run, and every
    output, manifest line and lock is already written and closed by then. Only for a process's entry point:
    in a process that goes on, frozen objects are never collected.
    """
    gc.freeze()
