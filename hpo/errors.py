"""One error root for everything hpo reports to a user."""

from __future__ import annotations


class HpoError(Exception):
    """Anything hpo reports as a one-line message with a non-zero exit code."""

    exit_code = 1


class UsageError(HpoError):
    """Bad input from the user: exit code 2, nothing written."""

    exit_code = 2


class SpecError(UsageError):
    """A sweep file that is not valid; holds every problem as `path: what is wrong`."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems) or ["sweep: invalid"]
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' * (more > 1)}; `hpo validate` lists them)" if more else ""
        super().__init__(self.problems[0] + tail)


class MissingDependency(HpoError):
    """An optional package is needed for what was asked."""

    def __init__(self, package: str, feature: str):
        super().__init__(f"{feature} needs the package '{package}': pip install {package}")
