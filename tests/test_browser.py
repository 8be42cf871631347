"""The phone page in a real browser: Debian's chromium with a fake camera, against a real server process."""

from __future__ import annotations

import os
import re

import pytest
from conftest import make_scene, running_server

from training.realphoto.fake_camera import write_y4m

CHROMIUM = "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is missing (apt-get install chromium); CI installs it")


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """``python -m server`` for real (eventlet, plain HTTP on loopback) with small untrained models."""
    with running_server(tmp_path_factory.mktemp("server")) as (url, _log):
        yield url


def wait_for_fresh_results(page) -> None:
    """Wait until frames sent after the last control change have come back and been drawn."""
    sent = page.evaluate("window.partcam.nextId")
    page.wait_for_function(f"window.partcam.nextId > {sent + 2}", timeout=30_000)
    page.wait_for_timeout(300)


# Sets the opacity slider, then compares the drawn result with the frame it was computed on (mean
# absolute difference per channel), all in one synchronous step so no new result slips in between.
OPACITY_DIFF = """(percent) => {
  const slider = document.getElementById("opacity");
  slider.value = String(percent);
  slider.dispatchEvent(new Event("input"));
  const shown = window.partcam.shown, canvas = document.getElementById("overlay");
  const pixels = (source) => {
    const c = document.createElement("canvas");
    c.width = canvas.width; c.height = canvas.height;
    c.getContext("2d").drawImage(source, 0, 0, canvas.width, canvas.height);
    return c.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  };
  const drawn = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const frame = pixels(shown.frame), paint = pixels(shown.paint);
  let diff = 0, labelled = 0, painted = 0;
  for (let i = 0; i < drawn.length; i += 4) {
    for (let k = 0; k < 3; k++) diff += Math.abs(drawn[i + k] - frame[i + k]);
    if (paint[i + 3] === 255) {
      labelled++;
      if (drawn[i] === paint[i] && drawn[i + 1] === paint[i + 1] && drawn[i + 2] === paint[i + 2]) painted++;
    }
  }
  const count = drawn.length / 4;
  return { form: shown.form, width: canvas.width, height: canvas.height, diff: diff / (3 * count),
           labelled: labelled / count, painted: labelled ? painted / labelled : 1 };
}"""


def test_page_shows_live_overlays_readout_and_legend(live_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from engines.tasks import TASKS

    camera = tmp_path / "camera.y4m"
    write_y4m(camera, [make_scene(640, 480, seed=i) for i in range(6)])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-video-capture={camera}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                    is_mobile=True, has_touch=True)
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            failed: list[str] = []  # every file the page asks for must be there (no 404 for an icon)
            page.on("response", lambda response: failed.append(f"{response.status} {response.url}")
                    if response.status >= 400 else None)
            page.on("requestfailed", lambda request: failed.append(f"failed {request.url}"))
            page.goto(live_server + "/")

            expect(page.locator("#overlay")).to_be_visible(timeout=30_000)  # a result came back and was drawn
            expect(page.locator("#cnn-seconds")).to_have_text(re.compile(r"^\d+\.\d{3}$"))
            expect(page.locator("#readout")).to_contain_text(re.compile(r"CNN took \d+\.\d{3} seconds \(CPU time\)"))
            expect(page.locator("#legend li")).to_have_text(list(TASKS["parts"].classes[1:]))
            expect(page.locator("#untrained")).to_be_visible()
            expect(page.locator("#connection")).to_have_text("Live")
            # Results keep coming: the frame counter moves on.
            first = page.evaluate("window.partcam.nextId")
            page.wait_for_function(f"window.partcam.nextId > {first + 2}", timeout=30_000)
            expect(page.locator("#fps")).to_have_text(re.compile(r"^\d+\.\d fps$"))

            # The page asks for label maps and paints them itself over the frame it sent, so the
            # opacity slider works without a round trip: 0% shows the frame as sent, 100% the colours.
            # (The untrained test model may label everything as background: then nothing is painted.)
            clear = page.evaluate(OPACITY_DIFF, 0)
            # The page steps its frames down (640, 480, 384, 288 px long side) when results come back
            # slowly, as they do on a slow CPU: any step will do, in the camera's 4:3 shape.
            assert clear["form"] == "labels" and clear["width"] in (640, 480, 384, 288)
            assert clear["width"] * 3 == clear["height"] * 4
            assert clear["diff"] < 0.5
            solid = page.evaluate(OPACITY_DIFF, 100)
            assert solid["painted"] > 0.99  # every labelled pixel shows its class colour exactly
            if solid["labelled"] > 0.5:
                assert solid["diff"] > 10
            page.evaluate(OPACITY_DIFF, 60)

            page.get_by_role("radio", name="Clothes").click()
            expect(page.locator("#legend li")).to_have_text(list(TASKS["clothes"].classes[1:]))
            page.locator("#attention").click()
            expect(page.locator("#legend li")).to_have_text(["scale 1×", "scale 0.75×", "scale 0.5×"])
            shots = tmp_path  # the README's screenshots come from scripts/screenshot.py with the shipped models
            wait_for_fresh_results(page)
            page.screenshot(path=str(shots / "screenshot-attention.png"))
            page.locator("#attention").click()
            page.get_by_role("radio", name="Parts").click()
            wait_for_fresh_results(page)
            assert page_errors == []
            assert failed == []
            page.screenshot(path=str(shots / "screenshot.png"))
        finally:
            browser.close()


def test_page_can_ask_for_finished_overlay_jpegs(live_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    camera = tmp_path / "camera.y4m"
    write_y4m(camera, [make_scene(320, 240, seed=i) for i in range(3)])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(live_server + "/?form=jpeg")
            expect(page.locator("#overlay")).to_be_visible(timeout=30_000)
            wait_for_fresh_results(page)
            assert page.evaluate("window.partcam.shown.form") == "jpeg"
            assert page.evaluate("[window.partcam.shown.width, window.partcam.shown.height]") == [320, 240]
            assert page_errors == []
        finally:
            browser.close()
