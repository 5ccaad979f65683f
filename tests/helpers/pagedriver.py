"""Headless Chromium driven through Selenium, and the chat page as a user drives it; shared by the page tests
and benchmarks/page_speed.py. Selenium must be importable (the [dev] extra)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from helpers.serving import Server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
# the browser resolves no name and reaches no address but the test server's
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
         "--disable-default-apps", "--disable-extensions", "--window-size=1280,900",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
WAIT = float(os.environ.get("PAGE_WAIT", 120))


def chromium(profile: Path) -> Any:
    """A headless Chromium with its own profile folder; the caller quits it."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        raise RuntimeError("no Chromium and ChromeDriver here (Debian: apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


class Page:
    """The page as a user drives it: type, press keys, click, read what is on screen."""

    def __init__(self, driver: Any, artefacts: Path, downloads: Path) -> None:
        self.driver, self.artefacts, self.downloads = driver, artefacts, downloads
        downloads.mkdir(exist_ok=True)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        driver.set_window_size(1280, 900)

    def open(self, server: Server, ready: bool = True) -> None:
        self.driver.get(f"http://127.0.0.1:{server.port}/")
        if ready:
            self.until("document.body.dataset.ready === 'true'")

    def script(self, code: str, *args: Any) -> Any:
        return self.driver.execute_script(code, *args)

    def until(self, condition: str, timeout: float = WAIT) -> Any:
        try:
            return WebDriverWait(self.driver, timeout).until(lambda d: d.execute_script(f"return {condition}"))
        except TimeoutException:
            self.shot("timeout")  # what the page showed when the wait gave up, and its messages below
            shown = self.script("return [document.getElementById('status').textContent, "
                                "document.getElementById('messages').innerHTML.slice(-3000)]")
            raise AssertionError(f"waited {timeout:.0f} s for {condition}; status {shown[0]!r}, "
                                 f"messages …{shown[1]}") from None

    def find(self, css: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def texts(self, css: str) -> list[str]:
        return self.script("return [...document.querySelectorAll(arguments[0])].map((n) => n.textContent)", css)

    def type(self, text: str) -> None:
        self.find("#input").send_keys(text)

    def send(self, text: str) -> None:
        self.type(text)
        self.find("#input").send_keys(Keys.ENTER)

    def replied(self, answers: int, timeout: float = WAIT) -> None:
        """Wait for the reply to end: the Stop button gone and `answers` answers on screen."""
        self.until("document.getElementById('stop').hidden && !document.querySelector('.streaming') && "
                   f"document.querySelectorAll('.message.answer').length === {answers}", timeout)

    def answers(self) -> list[str]:
        return self.texts(".message.answer .answer")

    def button(self, message_css: str, label: str) -> Any:
        [button] = [b for b in self.all(f"{message_css} .actions button") if b.text == label]
        return button

    def upload(self, input_id: str, path: Path) -> None:
        field = self.find(f"#{input_id}")
        self.script("arguments[0].hidden = false", field)  # a file input is picked through its label's button
        field.send_keys(str(path))

    def downloaded(self, pattern: str) -> Path:
        """The one file the browser saved under a name matching `pattern`, once complete."""
        WebDriverWait(self.driver, WAIT).until(lambda _: len(list(self.downloads.glob(pattern))) == 1)
        return next(self.downloads.glob(pattern))

    def shot(self, name: str) -> None:
        self.driver.save_screenshot(str(self.artefacts / f"page-{name}.png"))
