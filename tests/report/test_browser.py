"""Report pages opened in a real browser: headless Chromium (the Debian `chromium` package, which `make test` installs
like PostgreSQL) driven by Playwright. Every page of the demo-sized fixtures (an experiment's, a tuned ensemble's, a
classifier's report and outputs/index.html) must load every image (no failed request, a non-zero natural size) and
log no console error. Skipped, saying why, where Chromium is absent or cannot start."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cxrdet.cli import app
from tests.helpers.ensemble_world import write_pair_of_one

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's), or a skip with the reason."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-test.txt)")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no chromium executable on PATH: `make test` installs the Debian chromium package as root; "
                    "elsewhere install it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=executable, headless=True,
                                         args=["--no-sandbox", "--disable-gpu"])
        except Exception as err:  # playwright raises its own Error type for a browser that cannot start
            pytest.skip(f"{executable} cannot start headless: {str(err).splitlines()[0]}")
        yield chromium
        chromium.close()


def check_page(browser: Any, page_path: Path) -> None:
    """Open `page_path`; every <img> loaded with a non-zero natural size, no failed request, no console error."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
    page.goto(page_path.resolve().as_uri(), wait_until="load")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src'), complete: e.complete, w: e.naturalWidth, "
               "h: e.naturalHeight}))")
    page.close()
    broken = [i["src"] for i in images if not i["complete"] or i["w"] == 0 or i["h"] == 0]
    assert not broken, f"{page_path}: images that did not load: {broken}"
    assert not errors, f"{page_path}: {errors}"


def test_every_report_page_loads_its_images_without_console_errors(
        browser: Any, tiny_run: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_run["outputs"]))
    experiment = tiny_run["experiment"]
    config = write_pair_of_one(tmp_path / "tiny_browser.py", experiment)
    runner = CliRunner()
    assert runner.invoke(app, ["tune", str(config), "--no-honest"]).exit_code == 0
    pages = []
    for name, out in ((experiment, tmp_path / "experiment"), (str(config), tmp_path / "ensemble")):
        result = runner.invoke(app, ["report", name, "--out", str(out)])
        assert result.exit_code == 0, result.output
        pages.append(out / "index.html")
    result = runner.invoke(app, ["report", "--all"])
    assert result.exit_code == 0, result.output
    pages.append(Path(result.output.strip().splitlines()[-1]))  # outputs/index.html
    for page in pages:
        check_page(browser, page)


def test_a_classifier_report_loads_in_the_browser(browser: Any, tiny_classifier_run: dict[str, Any], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDET_OUTPUTS", str(tiny_classifier_run["outputs"]))
    result = CliRunner().invoke(app, ["report", tiny_classifier_run["experiment"], "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    check_page(browser, tmp_path / "index.html")


def test_the_check_catches_a_broken_image_and_a_console_error(browser: Any, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 3)).save(tmp_path / "ok.png")
    good = tmp_path / "good.html"
    good.write_text('<!DOCTYPE html><html><body><img src="ok.png"></body></html>')
    check_page(browser, good)
    for body in ('<img src="missing.png">', '<script>console.error("boom")</script>'):
        bad = tmp_path / "bad.html"
        bad.write_text(f"<!DOCTYPE html><html><body>{body}</body></html>")
        with pytest.raises(AssertionError):
            check_page(browser, bad)
