"""Child processes of the tests and their scripts: how one is stopped."""

import signal
import subprocess


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """Stop ``process`` as supervisor would: SIGTERM, then SIGKILL after ``timeout`` s.

    Returns:
        its exit status (negative: the signal that ended it).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
