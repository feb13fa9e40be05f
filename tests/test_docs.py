"""The README and the documentation site against the code: every registered method in the README's feature table,
every docs page an error links to present (with its heading), the reference generated from the real parsers and
dataclasses, one site address, and the README's set-up command the one CI runs."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest
import yaml

from lightning_edit.errors import DOCS_URL, ConfigError, docs_link

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug of a heading (what MkDocs writes as its anchor)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)  # no headings inside code blocks
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE)}


def _docs_link_calls() -> list[tuple[Path, int, str, str]]:
    """Every ``docs_link("page", "anchor")`` with literal arguments in the package: (file, line, page, anchor)."""
    calls = []
    for path in sorted((ROOT / "lightning_edit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "docs_link"):
                continue
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            assert len(args) == len(node.args) and args, f"{path}:{node.lineno}: docs_link takes literal page names"
            calls.append((path, node.lineno, args[0], args[1] if len(args) > 1 else ""))
    return calls


def test_every_registered_method_is_in_the_readme_feature_table():
    from lightning_edit.editors import EDITORS

    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    listed = {m for row in rows[1:] for m in re.findall(r"`([^`]+)`", row[2])}  # the `--method` column
    missing = sorted(set(EDITORS) - listed)
    assert not missing, f"README.md '## Methods' table lacks a row for {missing}: add one per registered method"


def test_every_docs_page_an_error_links_exists_with_its_heading():
    calls = _docs_link_calls()
    assert len(calls) >= 10  # the errors that send the user to read something (errors.docs_link)
    generated = set(_hook().PAGES)
    for path, line, page, anchor in calls:
        where = f"{path.relative_to(ROOT)}:{line}: docs_link({page!r}, {anchor!r})"
        if page in generated:
            assert not anchor, f"{where}: a generated page's headings are not checked here; link the page"
            continue
        assert (DOCS / page).is_file(), f"{where}: docs/{page} does not exist"
        if anchor:
            assert anchor in _anchors(DOCS / page), f"{where}: docs/{page} has no heading with anchor #{anchor}"


def test_docs_link_gives_the_site_address_of_a_page():
    assert docs_link("guides/data.md") == DOCS_URL + "guides/data/"
    assert docs_link("guides/gpu.md", "encoder-decoder-models-t5") == DOCS_URL + "guides/gpu/#encoder-decoder-models-t5"
    assert docs_link("index.md") == DOCS_URL and docs_link("data.md") == DOCS_URL + "data/"


def test_the_site_address_is_written_once_in_each_place_and_they_agree():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["site_url"] == DOCS_URL


def test_an_unknown_hyperparameter_error_links_the_reference():
    from lightning_edit.editors.locate.rome import ROMEHyperParams

    with pytest.raises(ConfigError, match=re.escape(docs_link("reference/hyperparameters.md"))):
        ROMEHyperParams.from_dict({"layers": [4], "v_lrr": 1.0})


def test_every_nav_page_exists_or_is_generated():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    generated = set(_hook().PAGES)
    missing = [p for p in pages(config["nav"]) if p not in generated and not (DOCS / p).is_file()]
    assert not missing


def test_readme_links_point_at_files_that_exist():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    assert local, "the README links its docs pages"
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_readme_keeps_the_ci_test_command_and_the_main_job():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = next(line for line in ci.splitlines() if line.startswith("pip install"))
    readme = README.read_text(encoding="utf-8")
    assert f"\n{test_command}\n" in readme
    assert "\npython edit.py\n" in readme
    assert len(readme.splitlines()) <= 250


def test_the_cli_reference_lists_every_flag_of_edit_and_study():
    from lightning_edit import cli

    hook = _hook()
    for build in (cli.build_parser, cli.build_study_parser):
        parser = build()
        page = "\n".join(hook._parser_section("x", "x", parser))
        flags = [o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")]
        assert flags and [f for f in flags if f"`{f}`" not in page] == []


def test_the_hyperparameter_reference_lists_every_field_with_its_comment():
    from lightning_edit.editors import EDITORS

    hook = _hook()
    for name, cls in EDITORS.items():
        page = hook.fields_table(cls.HParams, {})
        missing = [f.name for f in dataclasses.fields(cls.HParams) if f"| `{f.name}` |" not in page]
        assert not missing, f"{name}: {missing}"
    rome = hook.fields_table(EDITORS["rome"].HParams, {"layers": [4]})
    assert "negative: counted from the last block" in rome  # the field's comment in the source
    assert "*speed only*" in rome  # v_tokens_per_pass is declared SPEED_ONLY
