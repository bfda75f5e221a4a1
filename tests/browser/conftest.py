"""A real browser for the web view's tests: Debian's chromium driven by Playwright.

Screenshots of every page go to ``$CMBAGENT_BROWSER_ARTIFACTS`` (default ``browser-artifacts/``
at the top of the repository), for people and CI to look at.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("CMBAGENT_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("CMBAGENT_BROWSER_ARTIFACTS")
                 or Path(__file__).parents[2] / "browser-artifacts")


@pytest.fixture(scope="session")
def browser(template_database: str) -> Iterator[Browser]:
    # The migrated template first: Playwright's sync API keeps an event loop running in this
    # thread, and alembic's asyncio.run would refuse to start under it.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page that fails the test on a script error or a dialog (an injected alert)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"script error: {error}"))
    page.on("console", lambda message: message.type == "error"
            and errors.append(f"console: {message.text}"))
    page.on("dialog", lambda dialog: (errors.append(f"dialog: {dialog.message}"),
                                      dialog.dismiss()))
    yield page
    context.close()
    assert not errors, errors


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_page(page: Page, url: str) -> None:
    """Go to a page of the web view and wait until its script has drawn it."""
    page.goto(url)
    page.wait_for_selector("body[data-ready], #page-error")
    assert page.locator("#page-error").count() == 0, page.locator("#page-error").text_content()
