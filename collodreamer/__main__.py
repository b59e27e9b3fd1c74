import os
import signal
import sys


def _terminated(signum, frame):
    raise KeyboardInterrupt(signum)


signal.signal(signal.SIGTERM, _terminated)  # as Ctrl-C while torch loads; the CLI installs its own
try:
    from collodreamer.cli import main
except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM while torch loads: nothing has started yet
    signum = stop.args[0] if stop.args else signal.SIGINT
    print(
        f"collodreamer: stopped by {signal.Signals(signum).name} before starting", file=sys.stderr, flush=True
    )
    # os._exit: an interrupt escaping a module's import makes sys.exit end the process by SIGINT instead
    os._exit(128 + signum)

sys.exit(main())
