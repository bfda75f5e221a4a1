"""Installs ``cmbagent_tracking.pth`` next to the packages, so an unmodified AG2 program is
captured when CMBAGENT_COLLECTOR_URL is set (and nothing is imported when it is not)."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        self.copy_file("agent_shim/cmbagent_tracking.pth",
                       os.path.join(self.build_lib, "cmbagent_tracking.pth"))


setup(cmdclass={"build_py": BuildWithStartupHook})
