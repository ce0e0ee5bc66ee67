import sys

from kd_lib.cli import main

sys.exit(main())
