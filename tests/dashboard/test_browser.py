"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium), over a real proxy and a real node:

hello-web (software-release/) is built by `slapos node software` and deployed by `slapos node
instance`; a second instance (the test profile tests/data/instance/promise.cfg) has a promise
that fails. Then every page must load without a browser console error, the hello-web instance
must show its published URL as a link that works when followed, the failing promise must show
as failing, every page must parse as strict HTML and pass axe-core's checks, the keyboard must
reach the content first, a phone-sized window must not scroll sideways, and /status.json and
/metrics (the proxy's and the node's) must carry the values of the scenario.

Screenshots of each page go to test-artifacts/screenshots/ (gitignored; a CI artifact), or to
$SLAPNODE_SCREENSHOTS (`make screenshots` points it at docs/_static/).
"""
from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import html5lib
import pytest

from tests.conftest import IS_ROOT, REPO, wait_for
from tests.fixtures.proxy import free_port
from tests.instance.conftest import instance_node  # noqa: F401 - the fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HELLO_WEB = REPO / "software-release" / "hello-web" / "software.cfg"
MESSAGE = "Hello from the dashboard test"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def screenshot_directory() -> Path:
    directory = Path(os.environ.get("SLAPNODE_SCREENSHOTS") or REPO / "test-artifacts" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        message = (f"{', '.join(missing)} not installed: `apt-get install chromium chromium-driver` "
                   "(`make browser` does it as root)")
        if IS_ROOT:  # CI runs as root and must run these tests
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def raw(url: str) -> str:
    with OPENER.open(url, timeout=30) as response:
        return response.read().decode("utf-8")


AXE = None


def axe_violations(driver) -> list[dict]:
    """axe-core (shipped in the axe-selenium-python package, run offline in the page)."""
    global AXE
    if AXE is None:
        import axe_selenium_python

        AXE = (Path(axe_selenium_python.__file__).parent / "node_modules" / "axe-core" / "axe.min.js").read_text()
    driver.execute_script(AXE)
    return driver.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(function (r) { done(r.violations); },"
        " function (e) { done([{id: 'axe-error', help: String(e), nodes: []}]); });"
    )


def check_page(driver, url: str, name: str) -> str:
    """Load, check console, HTML, accessibility and layout; save screenshots; return the text."""
    driver.set_window_size(1280, 1000)
    driver.get(url)
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, f"{name}: console errors {errors}"
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(raw(url))
    violations = axe_violations(driver)
    assert not violations, f"{name}: " + "; ".join(
        f"{v['id']}: {v['help']} ({[n.get('target') for n in v['nodes']][:3]})" for v in violations)
    directory = screenshot_directory()
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(max(height + 200, 600), 2400))  # the window's frame takes some
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(directory / f"dashboard-{name}.png"))
    # a phone: no sideways scrolling, and the content is still there
    driver.set_window_size(390, 844)
    driver.execute_script("window.scrollTo(0, 0)")
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), \
        f"{name}: the page scrolls sideways on a phone-sized window"
    driver.save_screenshot(str(directory / f"dashboard-{name}-phone.png"))
    driver.set_window_size(1280, 1000)
    text = driver.find_element("tag name", "main").text
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"], name
    return text


def build_hello_web(node) -> str:
    url = str(HELLO_WEB)
    node.proxy.connect().registerSupply().supply(url, node.computer_id)
    result = node.slapos("node", "software", "--now", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return url


def test_dashboard_in_a_real_browser(instance_node, browser):  # noqa: F811 - fixture
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    node = instance_node(partitions=3)
    hello = build_hello_web(node)
    port = free_port()
    web = node.request(hello, "hello", {"message": MESSAGE, "port": str(port)})
    promise_url = node.install("promise")
    sick = node.request(promise_url, "sick", {"promise": "fail"})
    code = node.instance()
    assert code == 2, "the failing promise makes the run exit 2"
    result = node.slapos("node", "report", "--now")
    assert result.returncode == 0, result.stderr
    connection = node.proxy.connect().registerOpenOrder().request(
        hello, "hello", partition_parameter_kw={"message": MESSAGE, "port": str(port)}).getConnectionParameterDict()
    published = connection["url"]
    assert published.endswith(f":{port}/")

    base = node.proxy.url.rstrip("/")
    c = node.computer_id

    # overview: the trees, links to both instances
    text = check_page(browser, f"{base}/dashboard", "overview")
    assert "hello" in text and "sick" in text and "hello-web/software.cfg" in text

    # keyboard: the first Tab reaches the skip link, which leads into the content
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.text == "Skip to content"
    active.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "content"

    # computer: partitions with their node status and promises
    text = check_page(browser, f"{base}/dashboard/computer?id={c}", "computer")
    # a promise failing after a deployment: the partition backs off ("waiting") before retrying
    assert "waiting" in text and "1/2 failing" in text and "retry after" in text
    row = browser.find_element(By.XPATH, f"//tr[th[normalize-space()='{web}']]")
    assert "ok" in row.text and "started" in row.text

    # the failing promise, shown as failing
    text = check_page(browser, f"{base}/dashboard/instance?computer={c}&partition={sick}", "instance-failing")
    failing = browser.find_element(By.XPATH, "//table[contains(@class, 'promises')]//tr[contains(@class, 'is-failing')]")
    assert "param" in failing.text and "failing" in failing.text and "the service is not healthy" in failing.text

    # hello-web: its URL is a link, and following it reaches the service
    text = check_page(browser, f"{base}/dashboard/instance?computer={c}&partition={web}", "instance")
    assert "hello-web-url" in text and "CPU" in text  # promise ok, usage from `node report`
    assert MESSAGE in text  # its parameters
    link = browser.find_element(By.LINK_TEXT, published)
    assert link.get_attribute("href") == published
    link.click()
    wait_for(lambda: MESSAGE in browser.find_element(By.TAG_NAME, "body").text, what="the service's page")
    browser.back()
    browser.get_log("browser")  # drain: the service's own page (its missing favicon) is not ours to judge

    # the JavaScript refresh replaces the content in place, and can be paused
    browser.get(f"{base}/dashboard?refresh=5")
    button = browser.find_element(By.ID, "refresh-toggle")
    assert button.is_displayed() and button.get_attribute("aria-pressed") == "false"
    marker = browser.execute_script("var m = document.querySelector('main h1'); m.dataset.seen = '1'; return 1")
    assert marker == 1
    wait_for(lambda: browser.execute_script("return !document.querySelector('main h1').dataset.seen"),
             timeout=20, what="an in-place refresh")
    button.click()
    assert button.get_attribute("aria-pressed") == "true" and button.text == "Resume"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]

    # machine-readable views after the scenario
    status = json.loads(raw(f"{base}/status.json"))
    records = {p["partition"]: p for p in status["partitions"]}
    assert records[web]["status"] == "ok" and records[web]["reported_state"] == "started"
    assert records[sick]["status"] == "waiting" and records[sick]["backoff"]["failures"] == 1
    assert sorted((p["title"], p["failed"]) for p in records[sick]["promises"]) == [("check-plugin", False),
                                                                                   ("param", True)]
    assert records[web]["usage"] and any("cpu" in k.lower() for k in records[web]["usage"])
    metrics = raw(f"{base}/metrics")
    assert f'slapproxy_node_promise_failures{{computer="{c}",partition="{sick}"}} 1' in metrics
    assert f'slapproxy_partitions{{computer="{c}",slap_state="busy",reported_state="started"}} 1' in metrics
    assert f'slapproxy_partitions{{computer="{c}",slap_state="busy",reported_state="error"}} 1' in metrics
    assert f'slapproxy_partitions{{computer="{c}",slap_state="free",reported_state="none"}} 1' in metrics
    assert f'slapproxy_software_releases{{computer="{c}",requested_state="available",reported_state="available"}} 1' \
        in metrics
    assert 'slapproxy_requests_total{endpoint="dashboard",method="GET",code="200"}' in metrics

    # the node: its status in the same vocabulary, and its metrics
    node_status = json.loads(node.slapos("node", "status", "--partitions", "--format", "json").stdout)
    mine = {p["partition"]: p for p in node_status["partitions"]}
    assert set(mine[sick]) == set(records[sick])  # same vocabulary, same fields
    assert mine[sick]["status"] == records[sick]["status"] == "waiting"
    node_metrics = node.slapos("node", "metrics").stdout
    assert f'slapos_node_partition_promise_failures{{partition="{sick}"}} 1' in node_metrics
    assert 'slapos_node_run_exit_code{kind="instance"} 2' in node_metrics
    assert 'slapos_node_partitions{status="waiting"} 1' in node_metrics
    assert f'slapos_node_partition_backoff_failures{{partition="{sick}"}} 1' in node_metrics
    assert 'slapos_node_software_build_duration_seconds{url="' + hello + '",status="built"}' in node_metrics
    assert f'slapos_node_partition_usage{{partition="{web}",resource=' in node_metrics

