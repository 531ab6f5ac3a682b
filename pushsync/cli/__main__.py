import sys

from pushsync.cli import main

sys.exit(main())
