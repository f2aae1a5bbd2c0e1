"""Inside the node's `archive` container (docker/compose-tracking.yaml):

    python -m chi_helpers.archive make /archives/NAME.tar [--runs-only]
    python -m chi_helpers.archive restore /archives/NAME.tar [--merge]

The stack's databases and bucket are read from the environment the Compose file gives the service.
"""

from __future__ import annotations

import argparse
import sys

from chi_helpers.archive import location, make, manifest, restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chi_helpers.archive", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["make", "restore"])
    parser.add_argument("archive", help="the archive file")
    parser.add_argument("--runs-only", action="store_true",
                        help="make: leave out the logged models no registered version uses")
    parser.add_argument("--merge", action="store_true",
                        help="restore: into a stack that holds runs already (clashing ids are reported and skipped)")
    args = parser.parse_args(argv)
    try:
        where = location.from_environment()
        if args.action == "make":
            make.make(where, args.archive, runs_only=args.runs_only)
        else:
            restore.restore(args.archive, where, merge=args.merge)
    except (manifest.ArchiveError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
