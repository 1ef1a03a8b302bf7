"""What a command-line tool imports: run it in a fresh interpreter and list the heavy frameworks it loaded."""

import ast
import subprocess
import sys
from typing import List, Sequence

FRAMEWORKS = ("paddle", "paddlenlp", "torch")


def frameworks_imported_by(tool: str, arguments: Sequence[str]) -> List[str]:
    """The FRAMEWORKS modules (top-level names) loaded while `tool` runs with `arguments`; the tool must succeed."""
    script = (
        "import runpy, sys\n"
        f"sys.argv = [{tool!r}, *{list(arguments)!r}]\n"
        f"runpy.run_path({tool!r}, run_name='__main__')\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout.splitlines()[-1])
