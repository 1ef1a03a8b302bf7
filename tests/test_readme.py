"""The README's first two commands stay what CI and users run."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return re.findall(r"```bash\n(.*?)\n```", f.read(), flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = readme_commands("README.md")[1]
    assert "pytest" in test_command and '".[test]"' in test_command
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci_lines = [line.strip() for line in f]
    assert test_command in ci_lines


def test_chinese_readme_starts_with_the_same_commands():
    assert readme_commands("README_cn.md")[:2] == readme_commands("README.md")[:2]
