"""The latent explorer page (`service/static/`) driven in headless Chromium against a live service.

The service runs as a real `vae-serve` subprocess on a free loopback port, serving the session's tiny models
(`tiny`: latent 8, `tiny-2d`: latent 2), and the page talks to it over HTTP exactly as a user's browser would.
Chromium is Debian's package (`scripts/install_chromium.sh`), driven by Playwright through `executable_path`:
Playwright's own browser download needs the internet. Without either, these tests skip and say why.

Screenshots land in test-artifacts/ (failed tests add FAILED-<test>-<n>.png). docs/explorer.png, the README's
picture, is rewritten only on request (see `test_readme_screenshot`), so a test run never dirties the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "service" / "static"
DOCS_SCREENSHOT = ROOT / "docs" / "explorer.png"
DOCS_SCREENSHOT_MAX_BYTES = 300_000
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# The first prior sample of these tests' default seed; any wait longer than this is a failure, not slowness.
TIMEOUT_MS = 30_000

browser_mark = pytest.mark.browser


def _chromium() -> str | None:
    configured = os.environ.get("VAE_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    for path in CHROMIUM_CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium")


# --- the live service ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 300.0) -> None:
    # Loading and warming every committed model takes about 30 s on 2 idle cores, minutes on busy ones.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vae-serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"vae-serve not ready after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def _serve(models_dir: Path, log: Path, **env_vars: str) -> Iterator[str]:
    """`vae-serve` on a free 127.0.0.1 port; yields its URL once /readyz says ready, stops it afterwards."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # A clean VAE_* environment: a developer's API keys or model list must not leak into the test service.
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAE_")} | env_vars
    env.setdefault("VAE_GRPC_PORT", "0")  # HTTP only; a gRPC port is not shared between servers
    cmd = [sys.executable, "-m", "service.server.cli", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--models-dir", str(models_dir), "--log-level", "warning"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            _wait_ready(url, proc, log)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="session")
def live_url(models_dir: Path, artifacts_dir: Path) -> Iterator[str]:
    """The service with the session's tiny models, shared by every browser test."""
    with _serve(models_dir, artifacts_dir / "explorer-service.log") as url:
        yield url


# --- the browser --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    executable = _chromium()
    if executable is None:
        looked = os.environ.get("VAE_CHROMIUM") or " or ".join(CHROMIUM_CANDIDATES)
        pytest.skip(f"no Chromium at {looked}; run scripts/install_chromium.sh (or set VAE_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield browser
        finally:
            browser.close()


class PageProblems:
    """Uncaught exceptions and console errors of one page; a test that expects API errors excuses those."""

    def __init__(self) -> None:
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []

    def check(self, *, allow_failed_requests: bool = False) -> None:
        errors = [
            text
            for text in self.console_errors
            if not (allow_failed_requests and text.startswith("Failed to load resource"))
        ]
        assert not self.exceptions, f"uncaught exceptions in the page: {self.exceptions}"
        assert not errors, f"console errors in the page: {errors}"


def _new_page(browser, viewport: dict[str, int] | None = None, **context_options):
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900}, **context_options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems = PageProblems()
    page.on("pageerror", lambda exc: problems.exceptions.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and problems.console_errors.append(msg.text))
    return page, problems


def _load(page, url: str) -> None:
    page.goto(url)
    # Ready when the model list arrived and the first samples and interpolation are on screen.
    page.wait_for_function("() => !document.getElementById('model-select').disabled")
    _wait_loaded(page, "#samples .tile img")
    _wait_loaded(page, "#frame")


@pytest.fixture
def open_page(browser, live_url: str, artifacts_dir: Path, request):
    """Open the explorer (`open_page("?model=tiny-2d", viewport=...)`) -> (page, problems).

    Pages are closed afterwards; when the test failed, each is first saved as FAILED-<test>-<n>.png.
    """
    opened = []

    def open_(query: str = "", **context_options):
        page, problems = _new_page(browser, **context_options)
        opened.append(page)
        _load(page, f"{live_url}/{query}")
        return page, problems

    yield open_
    report = getattr(request.node, "rep_call", None)
    for i, page in enumerate(opened):
        if report is not None and report.failed:
            with contextlib.suppress(Exception):
                shot = artifacts_dir / f"FAILED-{request.node.name}-{i}.png"
                page.screenshot(path=str(shot), full_page=True)
        page.context.close()


@pytest.fixture
def explorer(open_page):
    """The page at / with the default model, loaded, and its collected problems."""
    return open_page()


def _wait_loaded(page, selector: str) -> None:
    """Wait until the first element matching `selector` is an image that decoded to real pixels."""
    page.wait_for_function(
        "(sel) => { const img = document.querySelector(sel);"
        " return !!img && !!img.getAttribute('src') && img.complete && img.naturalWidth > 0; }",
        arg=selector,
    )


def _src(page, selector: str) -> str:
    return page.locator(selector).first.get_attribute("src") or ""


def _draw(page, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through `points` given as fractions of the drawing pad."""
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    assert box is not None
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


SEVEN = [(0.25, 0.22), (0.75, 0.22), (0.5, 0.5), (0.4, 0.8)]
ZERO = [(0.5, 0.2), (0.3, 0.35), (0.3, 0.65), (0.5, 0.8), (0.7, 0.65), (0.7, 0.35), (0.5, 0.2)]


def _reconstruct_drawing(page, points: list[tuple[float, float]]) -> None:
    before = _src(page, "#rec-output")
    page.click("#pad-clear")
    _draw(page, points)
    page.wait_for_function(
        "(before) => { const img = document.getElementById('rec-output');"
        " return img.getAttribute('src') && img.getAttribute('src') !== before"
        " && img.complete && img.naturalWidth > 0; }",
        arg=before,
    )


def _url_model(page) -> str | None:
    return page.evaluate("() => new URL(location.href).searchParams.get('model')")


def _select_model(page, name: str) -> None:
    page.select_option("#model-select", name)
    page.wait_for_function("(name) => document.getElementById('samples').dataset.model === name", arg=name)
    _wait_loaded(page, "#samples .tile img")
    assert _url_model(page) == name


# --- tests --------------------------------------------------------------------------------------------------


def test_static_page_is_self_contained() -> None:
    """No CDN, no external fonts, no build step: every asset is one of the three files served from /."""
    html = (STATIC / "index.html").read_text()
    for asset in ("style.css", "app.js"):
        assert f'"{asset}"' in html and (STATIC / asset).is_file()
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(
            r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import""", text
        ), f"{path.name} references an external resource"


@browser_mark
def test_drawing_is_reconstructed(explorer, artifacts_dir: Path) -> None:
    page, problems = explorer
    _reconstruct_drawing(page, SEVEN)

    # What the model saw: the drawing fitted into the model's 28x28 input like an MNIST digit.
    size = page.eval_on_selector("#rec-input", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [28, 28]
    assert page.eval_on_selector("#rec-output", "img => img.naturalWidth") == 28
    score = page.locator("#rec-score").text_content() or ""
    assert float(score) > 0, f"negative ELBO should be a positive number of nats, got {score!r}"
    # The default model (tiny) has an 8-D latent: one mean dot and one ±σ bar per dimension.
    assert page.locator("#latent-chart circle.mean").count() == 8
    assert page.locator("#latent-chart line.sd").count() == 8
    rows = page.locator("#latent-table tr")
    assert rows.count() == 8
    sigmas = [float(rows.nth(i).locator("td").nth(2).text_content() or "nan") for i in range(8)]
    assert all(0 < s < 5 for s in sigmas), sigmas
    page.screenshot(path=str(artifacts_dir / "explorer-reconstruct.png"), full_page=True)
    problems.check()


@browser_mark
def test_upload_is_reconstructed(explorer, mnist_digits, tmp_path: Path) -> None:
    """A real test digit uploaded as a PNG, and the same digit as dark ink on paper with "invert" ticked."""
    from PIL import Image

    page, problems = explorer
    digit = (mnist_digits[0][0, 0] * 255).round().astype("uint8")  # (28, 28), white on black
    light = tmp_path / "digit.png"
    Image.fromarray(digit).resize((112, 112)).save(light)
    page.set_input_files("#upload", str(light))
    _wait_loaded(page, "#rec-output")
    plain_score = float(page.locator("#rec-score").text_content() or "nan")
    assert plain_score > 0
    # The fixture models ship no novelty calibration: the page says so where it would show the p-value.
    assert "novelty p-value: no calibration file" in page.inner_text("#score-unit")

    # Ink on paper, inverted in the browser back to MNIST's polarity: the same digit, about the same score.
    paper = tmp_path / "paper.png"
    Image.fromarray(255 - digit).resize((112, 112)).save(paper)
    page.check("#upload-invert")
    with page.expect_response(lambda r: r.url.endswith("/v1/reconstruct")) as response:
        page.set_input_files("#upload", str(paper))
    assert response.value.status == 200
    page.wait_for_function("() => !document.getElementById('reconstruct').hasAttribute('aria-busy')")
    _wait_loaded(page, "#rec-input")
    mean_input = page.eval_on_selector(
        "#rec-input",
        """img => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
        c.height = img.naturalHeight; const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data; let sum = 0;
        for (let i = 0; i < d.length; i += 4) sum += d[i]; return sum / (d.length / 4); }""",
    )
    assert mean_input < 80, "the inverted upload should be light strokes on a dark background"
    inverted_score = float(page.locator("#rec-score").text_content() or "nan")
    assert inverted_score == pytest.approx(plain_score, rel=0.1)
    problems.check()


@browser_mark
def test_seed_changes_samples(explorer, artifacts_dir: Path) -> None:
    page, problems = explorer
    first = [img.get_attribute("src") for img in page.locator("#samples .tile img").all()]
    assert len(first) == 16

    page.fill("#seed", "2")
    page.press("#seed", "Enter")
    page.wait_for_function("() => document.getElementById('samples').dataset.seed === '2'")
    second = [img.get_attribute("src") for img in page.locator("#samples .tile img").all()]
    assert second != first and second[0] != first[0]

    # The same seed gives the same samples back: the seed is the whole story.
    page.fill("#seed", "1")
    page.press("#seed", "Enter")
    page.wait_for_function("() => document.getElementById('samples').dataset.seed === '1'")
    assert [img.get_attribute("src") for img in page.locator("#samples .tile img").all()] == first

    page.click("#new-seed")
    page.wait_for_function("() => document.getElementById('samples').dataset.seed !== '1'")
    seed = page.input_value("#seed")
    assert seed != "1" and page.locator("#samples").get_attribute("data-seed") == seed
    assert _src(page, "#samples .tile img") != first[0]
    page.screenshot(path=str(artifacts_dir / "explorer-samples.png"), full_page=True)
    problems.check()


@browser_mark
def test_interpolation_slider_moves_through_frames(explorer, artifacts_dir: Path) -> None:
    page, problems = explorer
    # The page starts with an interpolation between the first two samples, shown at its middle frame.
    slider = page.locator("#frame-slider")
    assert slider.get_attribute("max") == "9"
    middle = _src(page, "#frame")
    slider.focus()
    page.keyboard.press("Home")
    page.wait_for_function("() => document.getElementById('frame').dataset.index === '0'")
    start = _src(page, "#frame")
    assert start != middle
    assert start == _src(page, "#filmstrip .tile:nth-child(1) img")
    assert "1 / 10" in (page.locator("#frame-label").text_content() or "")
    page.keyboard.press("End")
    page.wait_for_function("() => document.getElementById('frame').dataset.index === '9'")
    assert _src(page, "#frame") not in (start, middle)

    # slerp takes another path between the same endpoints: its middle frame differs from lerp's.
    lerp_frames = [img.get_attribute("src") for img in page.locator("#filmstrip img").all()]
    page.check("#method-slerp")
    page.wait_for_function("() => document.getElementById('filmstrip').dataset.method === 'slerp'")
    slerp_frames = [img.get_attribute("src") for img in page.locator("#filmstrip img").all()]
    assert len(slerp_frames) == 10 and slerp_frames != lerp_frames

    # Two drawings as endpoints: sent to /v1/interpolate as images, which the service encodes.
    _reconstruct_drawing(page, SEVEN)
    page.click("#rec-to-a")
    _reconstruct_drawing(page, ZERO)
    with page.expect_response(lambda r: r.url.endswith("/v1/interpolate")) as response:
        page.click("#rec-to-b")
    assert response.value.status == 200
    assert "images" in (response.value.request.post_data_json or {})
    page.wait_for_function("() => document.getElementById('filmstrip').dataset.endpoints === 'images'")
    _wait_loaded(page, "#frame")
    page.fill("#frame-slider", "0")
    page.wait_for_function("() => document.getElementById('frame').dataset.index === '0'")
    page.screenshot(path=str(artifacts_dir / "explorer-interpolate.png"), full_page=True)
    problems.check()


@browser_mark
def test_model_picker_updates_info(explorer, artifacts_dir: Path) -> None:
    page, problems = explorer
    info = page.locator("#model-info")
    assert re.search(r"latent size\s*8", info.inner_text())
    assert page.locator("#decode-run").is_disabled() and page.locator("#manifold-img").is_hidden()
    before = _src(page, "#samples .tile img")

    _select_model(page, "tiny-2d")
    text = info.inner_text()
    assert re.search(r"latent size\s*2", text)
    assert "mnist" in text and "ELBO" in text
    assert re.search(r"providers\s*(CPU|CUDA)", text), text
    assert _src(page, "#samples .tile img") != before
    assert page.locator("#decode-run").is_enabled()
    page.screenshot(path=str(artifacts_dir / "explorer-model.png"), full_page=True)

    _select_model(page, "tiny")
    assert re.search(r"latent size\s*8", info.inner_text())
    assert "needs a 2-D one" in page.locator("#manifold-note").inner_text()
    problems.check()


@browser_mark
def test_manifold_click_decodes_that_latent(explorer, artifacts_dir: Path) -> None:
    page, problems = explorer
    assert page.locator("#manifold-img").is_hidden()  # the default model's latent is 8-D
    _select_model(page, "tiny-2d")
    _wait_loaded(page, "#manifold-img")
    size = page.eval_on_selector("#manifold-img", "img => [img.naturalWidth, img.naturalHeight]")
    # make_grid: 15 tiles of 28 px with 2 px of padding around each.
    assert size == [15 * 30 + 2] * 2

    # The centre of the top-left tile is the grid's first latent: low z1, high z2 (Gaussian quantile 0.05).
    page.locator("#manifold-img").scroll_into_view_if_needed()
    box = page.locator("#manifold-img").bounding_box()
    assert box is not None
    scale = box["width"] / size[0]
    page.mouse.click(box["x"] + 16 * scale, box["y"] + 16 * scale)
    _wait_loaded(page, "#decoded")
    z1, z2 = float(page.input_value("#z1")), float(page.input_value("#z2"))
    assert z1 == pytest.approx(-1.645, abs=0.01) and z2 == pytest.approx(1.645, abs=0.01)

    # Anywhere between tile centres decodes too: the middle of the picture is z = (0, 0).
    first = _src(page, "#decoded")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(
        "(first) => document.getElementById('decoded').getAttribute('src') !== first", arg=first
    )
    _wait_loaded(page, "#decoded")
    assert abs(float(page.input_value("#z1"))) < 0.05 and abs(float(page.input_value("#z2"))) < 0.05
    assert "z = (" in (page.locator("#decoded-caption").text_content() or "")
    assert page.locator("#manifold-marker").is_visible()
    page.screenshot(path=str(artifacts_dir / "explorer-manifold.png"), full_page=True)
    problems.check()


@browser_mark
def test_api_errors_are_shown(explorer, artifacts_dir: Path, tmp_path: Path) -> None:
    page, problems = explorer
    error = page.locator("#error")
    assert error.is_hidden()

    # An upload that is not an image: the service's 422 and its message appear in the alert region.
    junk = tmp_path / "not-an-image.png"
    junk.write_bytes(b"this is not a PNG")
    with page.expect_response(lambda r: r.url.endswith("/v1/reconstruct")) as response:
        page.set_input_files("#upload", str(junk))
    assert response.value.status == 422
    error.wait_for(state="visible")
    text = error.inner_text()
    assert "422" in text and "invalid_input" in text and "unsupported image format" in text
    assert page.locator("#error").get_attribute("role") == "alert"

    # A later success in another panel does not hide the error.
    page.fill("#seed", "5")
    page.press("#seed", "Enter")
    page.wait_for_function("() => document.getElementById('samples').dataset.seed === '5'")
    assert error.is_visible() and "unsupported image format" in error.inner_text()
    page.screenshot(path=str(artifacts_dir / "explorer-error.png"), full_page=True)
    page.click("#error-dismiss")
    assert error.is_hidden()

    # A temperature the service refuses (it must be > 0): the page sends it and shows the refusal.
    page.fill("#temperature", "0")
    with page.expect_response(lambda r: r.url.endswith("/v1/sample")) as response:
        page.press("#temperature", "Enter")
    assert response.value.status == 422
    error.wait_for(state="visible")
    assert "temperature" in error.inner_text()
    problems.check(allow_failed_requests=True)


@browser_mark
def test_api_key_is_asked_for(browser, models_dir: Path, artifacts_dir: Path) -> None:
    """A service with API keys: the page shows the 401, opens the key field, and works once a key is given."""
    log = artifacts_dir / "explorer-service-keyed.log"
    with _serve(models_dir, log, VAE_API_KEYS="explorer-test-key") as url:
        page, problems = _new_page(browser)
        try:
            page.goto(url)
            error = page.locator("#error")
            error.wait_for(state="visible")
            assert "401" in error.inner_text() and "unauthorized" in error.inner_text()
            assert page.locator("#auth").get_attribute("open") is not None
            page.fill("#api-key", "explorer-test-key")
            page.press("#api-key", "Enter")
            page.locator("#api-key").blur()
            page.wait_for_function("() => !document.getElementById('model-select').disabled")
            _wait_loaded(page, "#samples .tile img")
            error.wait_for(state="hidden")
            problems.check(allow_failed_requests=True)
        finally:
            page.context.close()


@browser_mark
def test_phone_touch_drawing(open_page, artifacts_dir: Path) -> None:
    """A 375 px wide touch screen: no sideways scrolling, and a finger on the pad draws and reconstructs."""
    page, problems = open_page(viewport={"width": 375, "height": 812}, has_touch=True, is_mobile=True)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    box = page.locator("#pad").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    page.locator("#pad").scroll_into_view_if_needed()
    box = page.locator("#pad").bounding_box()
    assert box is not None
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    _wait_loaded(page, "#rec-output")
    page.screenshot(path=str(artifacts_dir / "explorer-phone.png"), full_page=True)
    problems.check()


@browser_mark
def test_readme_screenshot(browser, request, artifacts_dir: Path) -> None:
    """The README's picture: a 2-D model with a drawing, samples, an interpolation and a decoded point.

    Ordinary runs take it of the session's tiny models, into test-artifacts/ only. To refresh
    docs/explorer.png, take it of real models:
    `VAE_UPDATE_DOCS_SCREENSHOT=1 VAE_DOCS_MODELS_DIR=models pytest tests/web -k readme`.
    """
    update = os.environ.get("VAE_UPDATE_DOCS_SCREENSHOT") == "1"
    shot = artifacts_dir / "explorer.png"
    if update:
        models = Path(os.environ.get("VAE_DOCS_MODELS_DIR", ROOT / "models"))
        with _serve(models, artifacts_dir / "explorer-service-docs.log") as url:
            _take_readme_screenshot(browser, url, shot)
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    else:
        _take_readme_screenshot(browser, request.getfixturevalue("live_url"), shot)
    assert shot.stat().st_size < DOCS_SCREENSHOT_MAX_BYTES


def _take_readme_screenshot(browser, url: str, shot: Path) -> None:
    with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as response:
        listing = json.load(response)
    two_d = [m["name"] for m in listing["models"] if m.get("ready") and m.get("latent_dim") == 2]
    assert two_d, f"no ready 2-D model at {url} to show the manifold"
    page, problems = _new_page(browser, color_scheme="dark")
    try:
        _load(page, f"{url}/?model={two_d[0]}")
        _wait_loaded(page, "#manifold-img")
        _reconstruct_drawing(page, SEVEN)
        page.locator("#manifold-img").scroll_into_view_if_needed()
        box = page.locator("#manifold-img").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6)
        _wait_loaded(page, "#decoded")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.mouse.move(0, 0)  # no hover highlight in the picture
        page.screenshot(path=str(shot), full_page=True)
        _shrink_png(shot)
        problems.check()
    finally:
        page.context.close()


def _shrink_png(path: Path) -> None:
    """A flat UI screenshot loses nothing visible at 256 colours, and shrinks several times."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


# --- class picker and colour models, on the committed models ------------------------------------------------
# `fashion` (10 Fashion-MNIST classes), `emoji` (RGB 32x32, emoji categories) and `mnist-2d` (no classes).

EMOJI_FIXTURES = ROOT / "tests" / "fixtures" / "emoji"
COLOUR_SCREENSHOT = ROOT / "docs" / "explorer-colour.png"


@pytest.fixture(scope="module")
def committed_url(artifacts_dir: Path) -> Iterator[str]:
    with _serve(ROOT / "models", artifacts_dir / "explorer-classes-service.log") as url:
        yield url


def _api_sample(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/v1/sample", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _is_colour(page, selector: str) -> bool:
    """Whether the decoded image has a pixel whose channels differ (a grey PNG has R = G = B)."""
    return page.evaluate(
        """(sel) => { const img = document.querySelector(sel); const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight; const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0); const d = ctx.getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) {
          if (Math.abs(d[i] - d[i + 1]) > 8 || Math.abs(d[i + 1] - d[i + 2]) > 8) return true; }
        return false; }""",
        selector,
    )


@browser_mark
@pytest.mark.timeout(240)
def test_label_picker_samples_the_class(browser, committed_url: str, artifacts_dir: Path) -> None:
    page, problems = _new_page(browser)
    try:
        _load(page, f"{committed_url}/?model=fashion")
        assert page.locator("#label-field").is_visible()
        options = page.locator("#label option").all_inner_texts()
        assert options[0] == "any (prior)" and "Sneaker" in options and len(options) == 11

        page.select_option("#label", "Sneaker")
        page.wait_for_function("() => document.getElementById('samples').dataset.label === 'Sneaker'")
        _wait_loaded(page, "#samples .tile img")
        assert page.inner_text("#sample-heading") == "Samples of class “Sneaker”"
        # The page shows exactly what the API gives for that seed, count and class.
        seed, count = int(page.input_value("#seed")), int(page.input_value("#count"))
        want = _api_sample(committed_url, {"n": count, "seed": seed, "label": "Sneaker", "model": "fashion"})
        srcs = [img.get_attribute("src") for img in page.locator("#samples .tile img").all()]
        assert srcs == [f"data:image/png;base64,{b64}" for b64 in want["images"]]

        # A model without classes hides the picker and samples the prior.
        page.select_option("#model-select", "mnist-2d")
        page.wait_for_function("() => document.getElementById('samples').dataset.model === 'mnist-2d'")
        assert not page.locator("#label-field").is_visible()
        assert page.locator("#samples").get_attribute("data-label") == ""
        page.screenshot(path=str(artifacts_dir / "explorer-classes.png"), full_page=True)
        problems.check()
    finally:
        page.context.close()


@browser_mark
@pytest.mark.timeout(240)
def test_label_colour_model_upload_samples_and_interpolation(
    browser,
    committed_url: str,
    artifacts_dir: Path,
) -> None:
    page, problems = _new_page(browser, color_scheme="dark")
    try:
        _load(page, f"{committed_url}/?model=emoji")
        assert "Smileys & Emotion" in page.locator("#label option").all_inner_texts()
        assert "colour model" in page.inner_text("#rec-hint")
        assert page.evaluate("() => document.body.dataset.background") == "white"
        page.select_option("#label", "Smileys & Emotion")
        page.wait_for_function(
            "(label) => document.getElementById('samples').dataset.label === label", arg="Smileys & Emotion"
        )
        _wait_loaded(page, "#samples .tile img")
        assert _is_colour(page, "#samples .tile img")
        _wait_loaded(page, "#frame")
        assert _is_colour(page, "#frame")

        before = page.locator("#rec-output").get_attribute("src")
        page.set_input_files("#upload", str(EMOJI_FIXTURES / "google-1f600.png"))
        page.wait_for_function(
            "(before) => { const img = document.getElementById('rec-output');"
            " return img.getAttribute('src') && img.getAttribute('src') !== before"
            " && img.complete && img.naturalWidth > 0; }",
            arg=before,
        )
        assert _is_colour(page, "#rec-output")
        assert "bits/dim" in page.inner_text("#score-unit")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.mouse.move(0, 0)
        shot = artifacts_dir / "explorer-colour.png"
        page.screenshot(path=str(shot), full_page=True)
        _shrink_png(shot)
        if os.environ.get("VAE_UPDATE_DOCS_SCREENSHOT") == "1":
            COLOUR_SCREENSHOT.write_bytes(shot.read_bytes())
        problems.check()
    finally:
        page.context.close()


@browser_mark
@pytest.mark.timeout(240)
def test_pixels_picker_shows_drawn_or_mean_images(browser, committed_url: str) -> None:
    page, problems = _new_page(browser)
    try:
        _load(page, f"{committed_url}/?model=emoji")
        assert page.locator("#pixels-field").is_visible()
        assert page.locator("#pixels option").all_inner_texts()[0] == "model's default (drawn)"
        _wait_loaded(page, "#samples .tile img")
        seed, count = int(page.input_value("#seed")), int(page.input_value("#count"))
        for choice in ("mean", "sample"):
            want = _api_sample(committed_url, {"n": count, "seed": seed, "model": "emoji", "pixels": choice})
            srcs = [f"data:image/png;base64,{b64}" for b64 in want["images"]]
            page.select_option("#pixels", choice)
            page.wait_for_function(
                "(first) => document.querySelector('#samples .tile img').getAttribute('src') === first",
                arg=srcs[0],
            )
            assert [img.get_attribute("src") for img in page.locator("#samples .tile img").all()] == srcs
        problems.check()
    finally:
        page.context.close()
