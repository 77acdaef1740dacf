"""Build hook: ship the top-level tasks/*.toml and models/*.toml inside the package.

They stay at the repository's top level for editing; a wheel (and a wheel built from the sdist)
gets a copy as lra_bench/configs/{tasks,models}/, which lra_bench.paths reads through
importlib.resources. Editable installs read the checkout's folders directly, so they get none.
Everything else about the build is in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_configs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for kind in ("tasks", "models"):
            files = sorted((ROOT / kind).glob("*.toml"))
            if not files:
                raise SystemExit(f"setup.py: no {kind}/*.toml next to setup.py; build from a "
                                 "full checkout or sdist")
            dest = Path(self.build_lib, "lra_bench", "configs", kind)
            self.mkpath(str(dest))
            for src in files:
                self.copy_file(str(src), str(dest / src.name))


setup(cmdclass={"build_py": build_py_with_configs})
