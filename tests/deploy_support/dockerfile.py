"""A Dockerfile reader for tests: stages, their instructions, ENV and the exec-form commands.

Handles what our Dockerfile uses: comments, line continuations, `FROM image AS name`, `ARG`, `ENV k=v`,
JSON (exec form) CMD and HEALTHCHECK. A shell-form CMD is refused: signals reach `sh`, not the process.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


class DockerfileError(Exception):
    pass


@dataclass
class Stage:
    name: str
    base: str  # an image, or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    stages: list[Stage]
    args: dict[str, str]  # ARGs before the first FROM, with their defaults

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise DockerfileError(f"no stage named {name!r}")

    def lineage(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        chain = [self.stage(name)]
        while any(s.name == chain[0].base for s in self.stages):
            chain.insert(0, self.stage(chain[0].base))
        return chain

    def env(self, name: str) -> dict[str, str]:
        """The environment a container of this stage starts with (ENV of the stage and its bases)."""
        env: dict[str, str] = {}
        for stage in self.lineage(name):
            for args in stage.all("ENV"):
                for item in shlex.split(args):
                    key, sep, value = item.partition("=")
                    if not sep:
                        raise DockerfileError(f"ENV {args!r}: use the KEY=VALUE form")
                    env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), "$" + m.group(1)), value)
        return env

    def workdir(self, name: str) -> str:
        found = [w for stage in self.lineage(name) for w in stage.all("WORKDIR")]
        return found[-1] if found else "/"

    def user(self, name: str) -> str:
        found = [u for stage in self.lineage(name) for u in stage.all("USER")]
        return found[-1] if found else "root"

    def cmd(self, name: str) -> list[str]:
        found = [c for stage in self.lineage(name) for c in stage.all("CMD")]
        if not found:
            raise DockerfileError(f"stage {name}: no CMD")
        return exec_form(found[-1])

    def healthcheck(self, name: str) -> tuple[dict[str, str], list[str]] | None:
        """(options, command) of the stage's HEALTHCHECK, None for `HEALTHCHECK NONE` or none at all."""
        found = [h for stage in self.lineage(name) for h in stage.all("HEALTHCHECK")]
        if not found or found[-1].strip() == "NONE":
            return None
        options_text, sep, command = found[-1].partition("CMD ")
        if not sep:
            raise DockerfileError(f"HEALTHCHECK {found[-1]!r}: no CMD")
        options = dict(option.lstrip("-").split("=", 1) for option in options_text.split())
        return options, exec_form(command)


def exec_form(args: str) -> list[str]:
    try:
        command = json.loads(args)
    except json.JSONDecodeError:
        raise DockerfileError(f'{args!r}: use the exec form ["..."] so that signals reach the process') from None
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise DockerfileError(f"{args!r}: not a list of strings")
    return command


def _logical_lines(text: str) -> list[str]:
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments (also inside a continued instruction) and blank lines
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        raise DockerfileError("the last instruction ends with a line continuation")
    return lines


def parse(path: Path) -> Dockerfile:
    stages: list[Stage] = []
    args: dict[str, str] = {}
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.I)
            if not match:
                raise DockerfileError(f"FROM {rest!r}")
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(match.group(2) or str(len(stages)), base))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileError(f"{keyword} before the first FROM")
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(stages, args)
