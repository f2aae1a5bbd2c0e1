import sys

from chi_helpers.cli import main

sys.exit(main())
