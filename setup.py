"""Install paddle_got.

CPU machines: `pip install -e ".[cpu]"`; with the test extras: `pip install -e ".[test]"`.
GPU machines: install paddlepaddle-gpu 3.x first (README), then `pip install -e .`.
"""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PADDLE_CPU = "paddlepaddle==3.3.1"


def read_requirements(name):
    """Requirement lines of `name`, comments and blank lines dropped."""
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def read_version():
    """`__version__` of paddle_got/__init__.py, the one place the version is written."""
    with open(os.path.join(HERE, "paddle_got", "__init__.py"), encoding="utf-8") as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), flags=re.M).group(1)


setup(
    name="paddle_got",
    version=read_version(),
    description="GOT-OCR2.0 inference and post-training on PaddlePaddle",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["paddle_got", "paddle_got.*"]),
    package_data={"paddle_got.kernels": ["*.cpp"]},  # compiled on first use (paddle_got/kernels/decode_cpu.py)
    python_requires=">=3.10,<3.13",
    install_requires=read_requirements("requirements.txt"),
    extras_require={"cpu": [PADDLE_CPU], "test": [PADDLE_CPU] + read_requirements("requirements-test.txt")},
    license="Apache-2.0",
)
