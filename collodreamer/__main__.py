import sys

try:
    from collodreamer.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch loads: nothing has started yet
    sys.exit(130)

sys.exit(main())
