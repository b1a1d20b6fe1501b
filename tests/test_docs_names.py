"""Every command, setting, parameter, function and class the README and docs/ name exists
in the code: a renamed or removed one fails here, not in a reader's shell."""

from __future__ import annotations

import argparse
import ast
import re
import shlex
from functools import cache
from pathlib import Path

import pytest
import yaml

from plants_mlops.cli import build_parser
from plants_mlops.pipeline_registry import pipeline_names

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"`([^`\n]+)`")
# Where a setting may be read: the package, the configuration, the deployment files.
SETTING_SOURCES = ["src", "conf", "deploy", "docker-compose.yml", "Dockerfile", "Makefile"]
# Where a class or function may be named: the package and what runs it (servers the tests
# start, benchmark tools).
NAME_SOURCES = [*SETTING_SOURCES, "tests", "benchmarks"]
FILE_SUFFIXES = {
    *("py", "yml", "yaml", "md", "json", "html", "parquet", "db", "csv", "txt", "log"),
    *("onnx", "png", "jpg", "toml", "cfg", "sh", "lock", "pth", "pt"),
}


def _spans(page: Path) -> list[str]:
    """The inline code spans and the lines of fenced code blocks of a page."""
    text = page.read_text(encoding="utf-8")
    spans: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        spans += [line for line in block.splitlines() if line.strip()]
    spans += CODE.findall(re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.S))
    return spans


@cache
def _source_text(sources: tuple[str, ...] = tuple(SETTING_SOURCES)) -> str:
    parts = []
    for name in sources:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if file.resolve() == Path(__file__).resolve():  # its own examples name nothing
                continue
            if file.suffix in {".py", ".yml", ".yaml", ".js", ".html", ".sh", ".toml", ""}:
                parts.append(file.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


@cache
def _parameters() -> dict:
    """The parameters of conf/base, and the task file's keys under ``task``."""
    merged: dict = {}
    for path in sorted((ROOT / "conf/base").glob("parameters*.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    task = ROOT / "conf/base/task.yml"
    if task.is_file():
        merged.update(yaml.safe_load(task.read_text()) or {})  # its keys sit under `task:`
    return merged


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def check_plants_mlops(words: list[str]) -> str | None:
    parser = build_parser()
    path = ["plants-mlops"]
    for word in words:
        if word.startswith("-"):
            flag = word.split("=", 1)[0]
            if flag not in _options(parser) and flag not in {"-h", "--help"}:
                return f"`{' '.join(path)}` has no option {flag}"
            continue
        subs = _subparsers(parser)
        if not subs:
            break
        if word not in subs:
            if re.fullmatch(r"[a-z][a-z-]*", word):
                return f"`{' '.join(path)}` has no command {word!r} (it has {sorted(subs)})"
            break
        parser, path = subs[word], [*path, word]
    return None


def check_kedro(words: list[str]) -> str | None:
    if "--pipelines" in words:
        i = words.index("--pipelines") + 1
        if i < len(words):
            valid = set(pipeline_names())
            for name in words[i].split(","):
                if name.strip() and not name.isupper() and name not in valid:
                    return f"no Kedro pipeline {name!r}"
    return None


def check_make(words: list[str]) -> str | None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    for word in words:
        if "=" in word or word.startswith("-"):
            continue
        if word not in targets:
            return f"no make target {word!r}"
    return None


@cache
def _module_files() -> dict[str, Path]:
    """Full module name -> its file, for every module of the package (no import: modules
    that import ZenML stay out of the test process)."""
    src = ROOT / "src"
    out = {}
    for path in (src / "plants_mlops").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _defines(tree: ast.AST, names: list[str]) -> bool:
    """Whether the module (or class) body defines ``names[0]`` (then ``names[1:]`` in it)."""
    if not names:
        return True
    for node in getattr(tree, "body", []):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == names[0]:
                return _defines(node, names[1:]) if isinstance(node, ast.ClassDef) else True
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name) and leaf.id == names[0]:
                        return True
        elif isinstance(node, ast.Import | ast.ImportFrom) and any(
            (a.asname or a.name).split(".")[0] == names[0] for a in node.names
        ):
            return True
    return False


def check_python_name(token: str) -> str | None:
    """``plants_mlops.module.name``, ``module.name`` or ``module.Class.method`` (a module of
    the package, by its last name) or ``name()``."""
    name = token.removesuffix("()")
    parts = name.split(".")
    files = _module_files()
    if parts[0] == "plants_mlops":
        bases = ["plants_mlops"]
    else:
        bases = [m for m in files if m.rsplit(".", 1)[-1] == parts[0]]
    if not bases or len(parts) == 1:
        if token.endswith("()") and len(parts) == 1:
            found = re.search(rf"\b{re.escape(name)}\(", _source_text(tuple(NAME_SOURCES)))
            return None if found else f"no function or class {name!r} in the package"
        return None
    for base in bases:
        module, i = base, 1
        while i < len(parts) and f"{module}.{parts[i]}" in files:
            module, i = f"{module}.{parts[i]}", i + 1
        tree = ast.parse(files[module].read_text(encoding="utf-8"))
        if _defines(tree, parts[i:]):
            return None
    return f"{token!r} does not resolve to anything in the package"


def _has_path(node: object, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _has_suffix_path(node: object, parts: list[str]) -> bool:
    """Whether ``parts`` is a key path starting at any depth (``probe.C_grid``)."""
    if _has_path(node, parts):
        return True
    return isinstance(node, dict) and any(_has_suffix_path(v, parts) for v in node.values())


def check_parameter(token: str) -> str | None:
    parts = token.split(".")
    if len(parts) > 1 and _has_suffix_path(_parameters(), parts):
        return None
    return f"no parameter {token!r} in conf/base"


def check_class(token: str) -> str | None:
    if re.search(rf"\b{re.escape(token)}\b", _source_text(tuple(NAME_SOURCES))):
        return None
    return f"class {token!r} is named nowhere in the package"


SCRIPT = re.compile(r"(?<![\w/-])((?:benchmarks|scripts)/[\w-]+\.py)\b(.*)")


def check_script(span: str) -> str | None:
    """``benchmarks/x.py --option ...`` or ``scripts/x.py ...``: the script exists and
    takes every option given (a ``"--option"`` in its source)."""
    found = SCRIPT.search(span)
    if not found:
        return None
    script, rest = found.groups()
    path = ROOT / script
    if not path.is_file():
        return f"no script {script}"
    if span[: found.start()].rstrip().endswith(" -f"):  # a file another tool runs (locust)
        return None
    source = path.read_text(encoding="utf-8")
    for option in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest):
        if f'"{option}"' not in source:
            return f"{script} takes no option {option}"
    return None


# Names of other projects' classes and operators the docs compare with.
EXTERNAL = {
    *("ConvInteger", "BaseHTTPMiddleware", "TestClient", "ThreadedMotoServer"),
    "ModelVersionResponse",
}


def _looks_like_a_class(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][a-z]+[A-Z]\w*", token)) and token not in EXTERNAL


def problems(page: Path) -> list[str]:
    shown = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
    found = []
    for span in _spans(page):
        line = span.split("  #")[0].split(" # ")[0].strip().lstrip("$ ").strip()
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        problem = None
        if words[:1] == ["plants-mlops"]:
            problem = check_plants_mlops(words[1:])
        elif words[:2] == ["kedro", "run"]:
            problem = check_kedro(words)
        elif words[:1] == ["make"]:
            problem = check_make(words[1:])
        problem = problem or check_script(line)
        # a family of settings (`PLANTS_X_*`): some setting of the package starts with it
        for setting in re.findall(r"\bPLANTS_[A-Z0-9_]*[A-Z0-9](?:\b|_\*)", span):
            if setting.removesuffix("*") not in _source_text():
                problem = problem or f"setting {setting} is read nowhere"
        token = span.strip()
        is_file = token.rsplit(".", 1)[-1] in FILE_SUFFIXES
        if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*(\(\))?", token) and not is_file:
            as_code, as_parameter = check_python_name(token), check_parameter(token)
            problem = (
                problem
                or (as_code and as_parameter and as_code)  # a name in the code or a parameter
                or (check_class(token) if _looks_like_a_class(token) else None)
            )
        if problem:
            found.append(f"{shown}: {span!r}: {problem}")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_the_page_gives_exists(page):
    assert problems(page) == []


def test_the_checker_catches_names_that_do_not_exist(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`plants-mlops registry promot 3` `kedro run --pipelines trainig` `make tset`\n"
        "`PLANTS_NOT_A_SETTING` `steps.make_steps` `ServingArtifactX` `PLANTS_NO_FAMILY_*`\n"
        "`training.probe.C_grids` `no_such_function()` `plants-mlops serve --prot 1`\n"
        "`benchmarks/bench_serving.py --batch-max 8` `python benchmarks/bench_nothing.py`\n"
    )
    found = problems(page)
    assert len(found) == 12, found


_WORDS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
NUMBER_WORDS = {word: n for n, word in enumerate(_WORDS, 2)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_number_of_zenml_steps_a_page_gives_is_the_pipelines(page):
    """docs/zenml.md and docs/dashboards.md said "the seven steps" of a run of eight."""
    from plants_mlops.contracts import STAGES

    said = re.findall(r"\b(\w+) (?:ZenML )?steps\b", page.read_text().replace("\n", " "))
    counts = [NUMBER_WORDS[w.lower()] for w in said if w.lower() in NUMBER_WORDS]
    assert all(n == len(STAGES) for n in counts), (page.name, said, len(STAGES))
