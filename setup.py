"""Build step that puts the bundled networks (the top-level cfg/ and weights/ folders) into the package, so a
wheel carries them as darknetpy/networks/{cfg,weights}. Everything else is declared in pyproject.toml; an
editable install reads the folders in place (darknetpy/bundled.py)."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = {"cfg": ("*.cfg",), "weights": ("*.weights", "*.names")}


class BuildPyWithNetworks(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, patterns in BUNDLED.items():
            target = Path(self.build_lib) / "darknetpy" / "networks" / folder
            target.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for source in sorted((ROOT / folder).glob(pattern)):
                    shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildPyWithNetworks})
