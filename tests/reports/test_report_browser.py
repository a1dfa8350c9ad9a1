"""``report.html`` in a real browser: headless Chromium through selenium (E5, issue 12).

Loads the report of a small 2D and a small 3D evaluation from a ``file://`` URL and checks the
DOM: one table row per case, every ``<img>`` decoded with a non-zero size, the slice slider
swaps the shown slice, clicking a header sorts the rows, no console error, and no request
other than the page itself (resource timing and Chrome's network log). A screenshot of each
report goes to ``$MEDSEG_REPORT_SCREENSHOT_DIR`` (default: the test's temporary folder) and its
path is printed.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``make test`` installs them
where apt is usable) and ``selenium`` (the ``dev`` extra); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                "(pip install -e '.[dev]')")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser_and_driver() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver")
         if os.path.isfile(p)), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    found = _browser_and_driver()
    if found is None:
        pytest.skip("no Chromium and chromedriver on this machine (apt-get install chromium "
                    "chromium-driver; make test does it where apt is usable)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1600", "--allow-file-access-from-files"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        drv = webdriver.Chrome(options=opts,
                               service=webdriver.ChromeService(executable_path=found[1]))
    except WebDriverException as e:
        pytest.skip(f"Chromium did not start: {str(e).splitlines()[0][:200]}")
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _open(drv: webdriver.Chrome, page: Path) -> None:
    drv.get_log("browser")  # drop earlier entries
    drv.get_log("performance")
    drv.get(page.resolve().as_uri())
    drv.execute_script("return document.readyState")


def _images_decoded(drv: webdriver.Chrome) -> list[tuple[str, int, int]]:
    return drv.execute_script(
        "return Array.from(document.images).map(i => [i.id || i.alt, i.complete ? 1 : 0, "
        "i.naturalWidth]);")


def _case_order(drv: webdriver.Chrome) -> list[str]:
    return [r.get_attribute("data-case")
            for r in drv.find_elements(By.CSS_SELECTOR, "#case-table tbody tr")]


def _column(drv: webdriver.Chrome, header: str) -> list[float]:
    heads = [h.text.replace("▲", "").replace("▼", "").strip()
             for h in drv.find_elements(By.CSS_SELECTOR, "#case-table thead th")]
    col = heads.index(header)
    cells = drv.find_elements(By.CSS_SELECTOR, f"#case-table tbody tr td:nth-child({col + 1})")
    return [float(c.get_attribute("data-v")) if c.get_attribute("data-v") else math.nan
            for c in cells]


def _click_header(drv: webdriver.Chrome, header: str) -> None:
    for h in drv.find_elements(By.CSS_SELECTOR, "#case-table thead th"):
        if h.get_attribute("title") == f"sort by {header}":
            h.click()
            return
    raise AssertionError(f"no header {header!r}")


def _no_errors_no_requests(drv: webdriver.Chrome, page: Path) -> None:
    severe = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], f"console errors: {severe}"
    resources = drv.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);")
    assert all(u.startswith(("data:", "file:")) for u in resources), resources
    urls = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    assert urls, "the network log recorded nothing (not even the page)"
    assert all(u.startswith(("data:", "file:")) for u in urls), urls
    assert not [u for u in urls if u.startswith("file:") and u != page.resolve().as_uri()]


def _screenshot(drv: webdriver.Chrome, name: str, fallback: Path) -> Path:
    folder = Path(os.environ.get("MEDSEG_REPORT_SCREENSHOT_DIR") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    height = drv.execute_script("return document.body.scrollHeight")
    drv.set_window_size(1400, min(int(height) + 40, 6000))
    path = folder / name
    assert drv.save_screenshot(str(path)), "screenshot failed"
    print(f"report screenshot: {path}")
    return path


def _static_checks(text: str) -> None:
    assert not re.search(r"""(?:src|href|action)\s*=\s*['"]?\s*(?:https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    srcs = re.findall(r"""<img[^>]*\ssrc=['"]([^'"]*)['"]""", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_report_3d_in_browser(browser: webdriver.Chrome, eval_3d: Path,
                              uncertainty_3d: dict[str, float], tmp_path: Path) -> None:
    page = eval_3d / "report.html"
    _static_checks(page.read_text())
    _open(browser, page)
    assert browser.title == "medseg evaluation"
    # one row per case, most uncertain first (uncertainty.csv)
    assert _case_order(browser) == sorted(uncertainty_3d, key=lambda c: -uncertainty_3d[c])
    shots = _images_decoded(browser)
    assert all(done and width > 0 for _, done, width in shots), shots
    planes = browser.find_elements(By.CSS_SELECTOR, "figure.case img")
    assert len(planes) == 3 * 3  # 3 cases x axial / coronal / sagittal
    # the slider swaps the embedded slice; the image decodes again
    slider = browser.find_element(By.ID, "range-0-axial")
    img = browser.find_element(By.ID, "img-0-axial")
    src0, slice0 = img.get_attribute("src"), int(img.get_attribute("data-slice"))
    slider.send_keys(Keys.END)
    src1, slice1 = img.get_attribute("src"), int(img.get_attribute("data-slice"))
    assert slice1 == 15 and slice0 != 15 and src1 != src0
    assert browser.find_element(By.ID, "label-0-axial").text == "axial slice 15 of 16"
    slider.send_keys(Keys.HOME)
    assert int(img.get_attribute("data-slice")) == 0 and img.get_attribute("src") not in (
        src0, src1)
    assert browser.execute_script("const i = arguments[0]; return i.complete && "
                                  "i.naturalWidth > 0", img)
    # sorting: numbers as numbers, click again to reverse
    _click_header(browser, "mean dice")
    up = _column(browser, "mean dice")
    assert up == sorted(up) and len(up) == 3
    _click_header(browser, "mean dice")
    assert _column(browser, "mean dice") == sorted(up, reverse=True)
    _click_header(browser, "case")
    assert _case_order(browser) == ["case_001", "case_002", "case_003"]
    _no_errors_no_requests(browser, page)
    assert _screenshot(browser, "report_3d.png", tmp_path).stat().st_size > 10_000


def test_report_2d_in_browser(browser: webdriver.Chrome, eval_2d: Path, tmp_path: Path) -> None:
    page = eval_2d / "report.html"
    _static_checks(page.read_text())
    _open(browser, page)
    metrics = json.loads((eval_2d / "metrics.json").read_text())
    n = len(metrics["cases"])
    rows = browser.find_elements(By.CSS_SELECTOR, "#case-table tbody tr")
    assert len(rows) == n == 4
    # worst first: mean Dice over classes ascending
    mean_dice = {c["case"]: sum(v["dice"] for v in c["classes"].values()) / len(c["classes"])
                 for c in metrics["cases"]}
    assert _case_order(browser) == sorted(mean_dice, key=mean_dice.get)
    shots = _images_decoded(browser)
    assert all(done and width > 0 for _, done, width in shots), shots
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.case img")) == n
    assert browser.find_elements(By.CSS_SELECTOR, "input[type=range]") == []  # 2D: no slider
    assert browser.find_element(By.ID, "model-card").text.startswith("Model card")
    _click_header(browser, "lesion dice")
    col = _column(browser, "lesion dice")
    assert col == sorted(col)
    _no_errors_no_requests(browser, page)
    assert _screenshot(browser, "report_2d.png", tmp_path).stat().st_size > 10_000
