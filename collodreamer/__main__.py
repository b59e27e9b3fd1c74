import sys

from collodreamer.cli import main

sys.exit(main())
