"""Run a Python app with SIGTERM blocked in every thread but the main one (graceful_restart.py --term-in-main).

A diagnostic, not the app under test: CPython runs signal handlers in the main thread
only, and when the kernel delivers a process-directed SIGTERM to another thread while
the main thread is blocked in a lock (threading.Event.wait()), the handler can wait
indefinitely. Blocking SIGTERM in the other threads makes the kernel deliver it to the
main thread. Usage: python term_in_main.py APP.py [ARGS...]
"""

import runpy
import signal
import sys
import threading

_run = threading.Thread.run


def _run_with_term_blocked(self):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    _run(self)


threading.Thread.run = _run_with_term_blocked
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
