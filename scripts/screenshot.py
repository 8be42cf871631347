#!/usr/bin/env python
"""The README's screenshots: the phone page in chromium, on the shipped models, with a real photo as the camera.

Starts ``python -m server`` (plain HTTP on loopback, the default models and engine), points
Debian's chromium at it with a fake camera that plays a real photo held up with a little hand
shake (``training/realphoto/fake_camera.py``), waits for fresh results and saves one phone-sized
PNG per view:

    python scripts/screenshot.py                      # docs/screenshot.jpg, -clothes, -attention
    python scripts/screenshot.py --photo grace_hopper --out-dir /tmp/shots
    python scripts/screenshot.py --photo guards       # any real-photo benchmark image (fetched on first use)

Needs chromium (``apt-get install chromium``) and playwright (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from server.launch import ServerStartError, local_server
from training.realphoto.fake_camera import handheld_frames, write_y4m
from training.realphoto.photos import PHOTO_SOURCES, available_photos

CHROMIUM = "/usr/bin/chromium"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


def wait_for_fresh_results(page, frames: int = 3) -> None:
    """Wait until frames sent after the last control change have come back and been drawn."""
    sent = page.evaluate("window.partcam.nextId")
    page.wait_for_function(f"window.partcam.nextId > {sent + frames}", timeout=60_000)
    page.wait_for_timeout(400)


def take_screenshots(url: str, camera: Path, out_dir: Path) -> list[Path]:
    """Parts, clothes and the attention view, each after fresh results arrived."""
    from playwright.sync_api import expect, sync_playwright

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-video-capture={camera}"]
    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
        try:
            page = browser.new_page(**PHONE)
            page.goto(url + "/")
            expect(page.locator("#overlay")).to_be_visible(timeout=60_000)
            wait_for_fresh_results(page)
            shots = [("screenshot.jpg", None), ("screenshot-clothes.jpg", "Clothes"),
                     ("screenshot-attention.jpg", "attention")]
            for name, control in shots:
                if control == "attention":
                    page.locator("#attention").click()
                elif control:
                    page.get_by_role("radio", name=control).click()
                wait_for_fresh_results(page)
                path = out_dir / name
                page.screenshot(path=str(path), type="jpeg", quality=85)
                saved.append(path)
        finally:
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="astronaut",
                        help=f"the real photo the fake camera plays: {', '.join(s.name for s in PHOTO_SOURCES)}, "
                             "or a real-photo benchmark image id (training/realphoto/benchmark_set.py)")
    parser.add_argument("--out-dir", type=Path, default=Path("docs"))
    parser.add_argument("server_args", nargs="*", help="extra `python -m server` options, after --")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium")
    if args.photo in {source.name for source in PHOTO_SOURCES}:
        photos = available_photos([args.photo])
        if not photos:
            raise SystemExit(f"the package holding {args.photo!r} is not installed")
        rgb = photos[0].rgb
    else:
        from training.realphoto.benchmark_set import load_image, spec_by_id

        try:
            spec_by_id(args.photo)
        except KeyError as error:
            raise SystemExit(str(error)) from None
        rgb, _ = load_image(args.photo)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="partcam-screenshot-") as tmp:
        camera = Path(tmp) / "camera.y4m"
        write_y4m(camera, handheld_frames(rgb))
        try:
            with local_server(args.server_args, Path(tmp) / "server.log") as server:
                saved = take_screenshots(server.url, camera, args.out_dir)
        except ServerStartError as error:
            raise SystemExit(str(error)) from None
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
