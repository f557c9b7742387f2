"""The README stays a one-page introduction and the documentation site (docs/, mkdocs.yml) holds together:
every relative link and every repository path the pages name exists, the site's navigation lists every
page, the API reference covers every public module, and the site builds offline (mkdocs.yml reaches no
network: no web fonts, no CDN scripts, no mkdocstrings inventories). The pages' code blocks run in
tests/test_readme.py."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
README_MAX_LINES = 300
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INDENTED = re.compile(r"(?:^(?: {4}|\t).*\n)+", re.M)  # indented code blocks (after a blank line)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# a file of the repository named in prose or in a code span: `examples/tutorial1_patching.py`, tests/test_derive.py
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:fxvene|passes|models|tests|examples|benchmarks|compat|constraints|docs|scripts)/[\w./-]*\w\.(?:py|md|txt|jsonl|json|yml))\b"
)
SNIPPET = re.compile(r'^-{1,}8<-{1,}[ \t]+"([^"]+)"', re.M)


def pages():
    found = []
    for base, _dirs, files in os.walk(DOCS):
        found += [os.path.relpath(os.path.join(base, f), ROOT).replace(os.sep, "/") for f in files if f.endswith(".md")]
    return ["README.md", *sorted(found)]


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The text of a page without its code blocks (fenced and indented): what links and names live in."""
    return INDENTED.sub("", FENCE.sub("", text))


def slug(heading):
    """The anchor GitHub and MkDocs (toc's default slugify) give a heading."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[\s]+", "-", text)


def anchors(page):
    return {slug(h) for h in re.findall(r"^#+ (.+?)\s*#*$", prose(read(page)), re.M)}


def links(page):
    """``(target, anchor)`` of every relative link of a page (web links and mail addresses left out)."""
    out = []
    for target in LINK.findall(CODE_SPAN.sub("", prose(read(page)))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        out.append((path, anchor))
    return out


def test_the_readme_is_a_one_page_introduction():
    n = len(read("README.md").splitlines())
    assert n < README_MAX_LINES, (
        f"README.md has {n} lines; it must stay under {README_MAX_LINES}: move the rest to docs/"
    )


def test_the_readme_keeps_its_set_up_block_example_and_support_matrix():
    text = read("README.md")
    assert "<!-- support-matrix:start -->" in text and "<!-- support-matrix:end -->" in text
    assert "<!-- readme-test: skip (needs the package registry" in text
    assert "## A 20-line example" in text and "## Set-up (two commands)" in text


@pytest.mark.parametrize("page", pages())
def test_every_relative_link_points_to_an_existing_file(page):
    here = os.path.dirname(os.path.join(ROOT, page))
    bad = []
    for path, anchor in links(page):
        target = os.path.normpath(os.path.join(here, path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(target):
            bad.append(f"{path}: no such file")
            continue
        if page.startswith("docs/") and os.path.relpath(target, DOCS).split(os.sep)[0] == "..":
            bad.append(f"{path}: outside docs/ (MkDocs cannot link it; name the file in a code span instead)")
            continue
        if anchor and target.endswith(".md") and anchor not in anchors(os.path.relpath(target, ROOT)):
            bad.append(f"{path}#{anchor}: no such heading")
    assert not bad, f"{page}: " + "; ".join(bad)


@pytest.mark.parametrize("page", pages())
def test_every_repository_path_a_page_names_exists(page):
    named = set(REPO_PATH.findall(prose(read(page))))
    missing = sorted(p for p in named if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, f"{page} names files that do not exist: {missing}"


def test_the_pages_include_only_sections_the_readme_has():
    for page in pages()[1:]:
        for ref in SNIPPET.findall(read(page)):
            path, _, section = ref.partition(":")
            assert os.path.exists(os.path.join(ROOT, path)), (page, ref)
            if section:
                text = read(path)
                for kind in ("start", "end"):
                    assert f"--8<-- [{kind}:{section}]" in text, f"{page} includes {ref}: {path} has no {kind} marker"


def _config():
    yaml = pytest.importorskip("yaml")

    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !!python/name tags (none today): read them as text
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
        return yaml.load(f, Loader=Loader)


def _nav_pages(nav):
    for item in nav:
        if isinstance(item, str):
            yield item
        else:
            for value in item.values():
                yield from ([value] if isinstance(value, str) else _nav_pages(value))


def _keys_named(value, name):
    if isinstance(value, dict):
        return [k for k in value if k == name] + [x for v in value.values() for x in _keys_named(v, name)]
    if isinstance(value, list):
        return [x for v in value for x in _keys_named(v, name)]
    return []


def test_mkdocs_yml_is_offline_safe_and_strict():
    cfg = _config()
    assert cfg["strict"] is True and cfg["use_directory_urls"] is False
    assert cfg["theme"]["name"] == "material" and cfg["theme"]["font"] is False  # no Google Fonts
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in cfg["plugins"]]
    assert not {"mike", "privacy", "social", "optimize"} & set(plugins), plugins
    assert not _keys_named(cfg, "inventories")  # mkdocstrings would download objects.inv
    for key in ("extra_javascript", "extra_css"):
        assert not any("://" in str(v) for v in cfg.get(key, [])), cfg[key]
    for page in pages()[1:]:
        assert not re.search(r"^```\s*mermaid", read(page), re.M), f"{page}: Material loads Mermaid from unpkg.com"


def test_the_navigation_lists_every_page_once():
    nav = list(_nav_pages(_config()["nav"]))
    assert len(nav) == len(set(nav)), sorted(p for p in nav if nav.count(p) > 1)
    on_disk = {p.removeprefix("docs/") for p in pages()[1:]}
    assert set(nav) == on_disk, (sorted(on_disk - set(nav)), sorted(set(nav) - on_disk))


def _public_modules():
    """Dotted names of the package's public modules as the API pages name them (``passes.x``, ``models.x``)."""
    out = []
    for top in ("fxvene", "passes", "models"):
        for base, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = [
                d for d in dirs if not d.startswith(("_", ".")) and os.path.exists(os.path.join(base, d, "__init__.py"))
            ]
            rel = os.path.relpath(base, ROOT).replace(os.sep, ".")
            out += [rel] + [f"{rel}.{f[:-3]}" for f in files if f.endswith(".py") and not f.startswith("_")]
    return sorted(set(out) - {"fxvene.__main__"})


def test_the_api_reference_covers_every_public_module():
    documented = set()
    for page in pages():
        if page.startswith("docs/api/"):
            documented |= set(re.findall(r"^::: ([\w.]+)", read(page), re.M))
    missing = sorted(set(_public_modules()) - documented)
    assert not missing, f"modules without a ::: directive on a docs/api/ page: {missing}"
    assert not sorted(documented - set(_public_modules()))


def test_the_site_builds_offline_with_no_warnings(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-5000:]
    assert "WARNING" not in r.stderr, r.stderr[-5000:]
    loads = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    for path in site.rglob("*.html"):
        found = loads.findall(path.read_text(encoding="utf-8"))
        assert not found, (path, found[:3])
    assert (site / "index.html").exists() and (site / "api" / "sweeps.html").exists()
