"""The wheel's build step for the configs: `conf/` and `sweeps/` stay at the checkout's top
level (where `python -m src.launch` reads them), and a built wheel carries copies inside the
`src` package (`src/_resources/`), where `src.resources` finds them after `pip install .`.
Everything else is declared in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("conf", "sweeps")


class BuildPy(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the checkout's folders
            return
        here = Path(__file__).resolve().parent
        for name in SHIPPED:
            target = Path(self.build_lib) / "src" / "_resources" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPy})
