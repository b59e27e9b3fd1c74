import os
import signal
import sys

stopped: list[int] = []  # the signal that stopped the start-up, once one did


def _stop(signum, frame):
    stopped.append(signum)
    raise KeyboardInterrupt(signum)


# SIGTERM as Ctrl-C while torch and MuJoCo load (the CLI installs its own handler for SIGTERM then)
for signum in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(signum) is not signal.SIG_IGN:
        signal.signal(signum, _stop)
try:
    from collodreamer.cli import main
except (KeyboardInterrupt, ImportError):  # MuJoCo's module turns an interrupt into an ImportError
    if not stopped:
        raise
    print(
        f"collodreamer: stopped by {signal.Signals(stopped[0]).name} before starting",
        file=sys.stderr,
        flush=True,
    )
    # os._exit: an interrupt escaping a module's import makes sys.exit end the process by SIGINT instead
    os._exit(128 + stopped[0])

sys.exit(main())
