"""``leaderboard.html`` in a real browser: headless Chromium driven by selenium (Debian's ``chromium`` and
``chromium-driver``; ``.ci/run`` installs them and sets ``IRPE_BENCH_REQUIRE_BROWSER=1``).

The page is rebuilt into a temporary folder from a committed study storage (``results/sweeps/digits_methods``:
five groups, so a sort has an order to change), then opened from disk. Checked: the ranking rows are the
board's groups in rank order, a click on a header sorts the rows by that column (numbers as numbers) and a
second click reverses them, the plots are inline images the browser decodes, and nothing was fetched from a
network (the page must work offline and attached to a mail).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "results" / "sweeps" / "digits_methods"
REQUIRED = bool(os.environ.get("IRPE_BENCH_REQUIRE_BROWSER"))


def _driver_paths():
    """(chromium, chromedriver) executables, or the reason there are none."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return None, ("headless Chromium is not installed (apt-get install chromium chromium-driver); "
                      "set IRPE_BENCH_REQUIRE_BROWSER=1 to make this a failure")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[test]')"
    return (browser, driver), None


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(the html path, the board's json) of a leaderboard rebuilt from the committed storage."""
    from irpe_bench.report import write_report

    tmp = tmp_path_factory.mktemp("browser")
    shutil.copy(STUDY / "optuna.db", tmp / "optuna.db")  # reading must not touch the committed file
    storage = f"sqlite:///{tmp / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    out = write_report(optuna.load_study(study_name=name, storage=storage), tmp / "out", None)
    return Path(out["html"]), json.loads(Path(out["json"]).read_text(encoding="utf-8")), out


@pytest.fixture(scope="module")
def browser():
    paths, why = _driver_paths()
    if paths is None:
        if REQUIRED:
            pytest.fail(f"IRPE_BENCH_REQUIRE_BROWSER is set but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--host-resolver-rules=MAP * ~NOTFOUND"):  # no name resolves: a network fetch could not succeed
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(executable_path=paths[1]), options=opts)  # no Selenium Manager download
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _column(drv, col: int):
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('#table-ranking tbody tr'))"
        ".map(tr => tr.cells[arguments[0]].textContent)", col)


def _header(drv, text: str):
    from selenium.webdriver.common.by import By

    heads = drv.find_elements(By.CSS_SELECTOR, "#table-ranking thead th")
    names = [h.text.replace("▲", "").replace("▼", "").strip() for h in heads]
    return heads[names.index(text)], names.index(text)


def test_the_html_references_nothing_outside_itself(page):
    html_path, _, _ = page
    text = html_path.read_text(encoding="utf-8")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text, flags=re.I)
    assert refs, "the page has no images"
    assert all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert "<link" not in text and not re.search(r"<script[^>]*\bsrc", text)  # no stylesheet, no script file
    assert "@import" not in text and "url(" not in text


def test_rows_sort_and_plots_in_headless_chromium(page, browser):
    from selenium.webdriver.common.by import By

    html_path, board, out = page
    browser.get(html_path.as_uri())
    assert browser.title == f"Leaderboard: {board['study_name']}"

    variants = [g["variant"] for g in board["groups"]]
    assert len(variants) == 5 and len(set(variants)) == 5
    assert _column(browser, 1) == variants  # rank order, as written

    # the variant column: text, ascending then descending
    head, col = _header(browser, "variant")
    head.click()
    assert _column(browser, col) == sorted(variants) and head.get_attribute("aria-sort") == "ascending"
    head.click()
    assert _column(browser, col) == sorted(variants, reverse=True)
    assert head.get_attribute("aria-sort") == "descending"

    # the accuracy column sorts by the number in front of the CI, not by the text
    head, col = _header(browser, f"{board['metric_label']} mean [95 % CI]")
    by_mean = [g["variant"] for g in sorted(board["groups"], key=lambda g: g["mean"])]
    assert len({g["mean"] for g in board["groups"]}) == 5  # distinct: the order is fully determined
    head.click()
    assert _column(browser, 1) == by_mean
    head.click()
    assert _column(browser, 1) == by_mean[::-1] == variants  # descending mean is the rank order again
    assert _header(browser, "variant")[0].get_attribute("aria-sort") is None  # one sorted column at a time

    # the plots: inline PNGs the browser decoded, one per drawn plot
    drawn = [k for k in ("forest", "accuracy_by_variant", "accuracy_vs_throughput", "optimization_history",
                         "param_importances") if k in out]
    imgs = browser.find_elements(By.TAG_NAME, "img")
    assert sorted(i.get_attribute("alt") for i in imgs) == sorted(drawn)
    assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 100", i)
               for i in imgs)

    # nothing came from a network: every resource the page loaded is the page itself or inline data
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(not u.startswith(("http:", "https:")) for u in loaded), loaded
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors  # the inline script ran without an error
