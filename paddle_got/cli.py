"""What every command-line entry point shares: one-sentence errors and exit code 2 instead of tracebacks."""

import sys
from typing import Callable

from .errors import GOTError

EXIT_BAD_INPUT = 2


def run_cli(main: Callable[[], None]) -> None:
    """Run `main()`; a GOTError or OSError becomes `error: <message>` on stderr and exit code 2."""
    try:
        main()
    except (GOTError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        sys.exit(130)
