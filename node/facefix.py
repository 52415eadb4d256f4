"""Face fixing: AI Horde's `GFPGAN` through spandrel, on faces OpenCV finds.

GFPGAN restores one face at a time, from a 512×512 crop aligned as FFHQ's faces are (eyes level, the
face filling the middle). AI Horde's workers find and align faces with facexlib's RetinaFace; the node
uses the frontal-face Haar cascade that OpenCV's 4.x wheels bundle (5.x wheels ship none: no cascade, no
face fixer declared), levels the crop by the eyes when the eye cascade finds two, restores the face,
and pastes it back through a feathered mask, mixed with the image by `facefixer_strength` (AI Horde's
weight: 0 keeps the image, 1 is GFPGAN's face). Pixels outside each face's crop are never touched.

CodeFormer (AI Horde's `CodeFormers`) is not in spandrel (its licence is non-commercial): never declared.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from node.spandrel_loader import PostProcessingError, load_descriptor

# The AI Horde face fixers the node can run, and the spandrel architecture each name must load as.
FACE_FIXER_ARCHITECTURES = {"GFPGAN": "GFPGAN"}
FACE_SIZE = 512  # GFPGANv1's input and output
# The crop around a Haar box: FFHQ's aligned faces span about half the crop's width, and the box's centre
# (about the nose) sits a tenth of the crop below the crop's centre.
_CROP_PER_BOX = 2.0
_CENTRE_SHIFT = 0.1
_MAX_TILT_DEGREES = 30.0  # eyes tilted further than this are more likely a misdetection than a head
_EYE_SEARCH_WIDTH = 256
_FEATHER = FACE_SIZE // 16  # the pasted face fades out over this many crop pixels at its edges


def cascades_available() -> bool:
    """OpenCV with its bundled Haar cascades (4.x wheels), so faces can be found."""
    return (_cascade_folder() / "haarcascade_frontalface_default.xml").is_file()


def _cascade_folder() -> Path:
    data = getattr(cv2, "data", None)  # cv2.data: the wheels' cascades, absent from 5.x wheels
    return Path(data.haarcascades if data is not None else "/nonexistent")


class FaceFixer:
    """One named face fixer, loaded on first use and kept."""

    def __init__(self, name: str, path: Path, device: torch.device) -> None:
        self.name, self.path, self.device = name, path, device
        self._model: Any = None
        self._cascades: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._detecting = threading.Lock()  # a CascadeClassifier keeps the image it scans: one scan at a time

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._model = self._load()
                self._cascades = cascades()

    def _load(self) -> Any:
        descriptor = load_descriptor(self.name, self.path, self.device)
        architecture = descriptor.architecture.id
        if architecture != FACE_FIXER_ARCHITECTURES[self.name]:
            raise PostProcessingError(f"{self.name}: {self.path} is not a {self.name} face fixer ({architecture})")
        return descriptor.model.eval()

    @torch.no_grad()
    def __call__(self, image: Image.Image, strength: float) -> tuple[Image.Image, int]:
        """The image with each face found restored, and how many faces were."""
        self.load()
        assert self._cascades is not None
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        gray = cv2.cvtColor(pixels.astype(np.uint8), cv2.COLOR_RGB2GRAY)
        with self._detecting:
            faces = find_faces(gray, *self._cascades) if strength > 0 else []
        for box, tilt in faces:
            pixels = self._fix(pixels, crop_transform(box, tilt), strength)
        return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)), len(faces)

    def _fix(self, pixels: np.ndarray, transform: np.ndarray, strength: float) -> np.ndarray:
        size = (FACE_SIZE, FACE_SIZE)
        crop = cv2.warpAffine(pixels, transform, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        # GFPGAN works in [-1, 1] (its training normalised by mean 0.5, std 0.5); spandrel passes tensors as given.
        tensor = torch.from_numpy(crop / 127.5 - 1).permute(2, 0, 1).unsqueeze(0).float().to(self.device)
        # The stored noise, not fresh noise: the same job gives the same image, which spot checks compare.
        restored = self._model(tensor, return_rgb=False, randomize_noise=False)[0]
        face = (restored.clamp(-1, 1)[0].permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5
        height, width = pixels.shape[:2]
        inverse = cv2.invertAffineTransform(transform)
        back = cv2.warpAffine(face, inverse, (width, height), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(_feathered_mask(), inverse, (width, height), flags=cv2.INTER_LINEAR)[..., None]
        # Mixed in the image, not in the crop: at strength 0 no pixel is resampled, so none changes.
        alpha = strength * mask
        return alpha * back + (1 - alpha) * pixels


def find_faces(gray: np.ndarray, faces: Any, eyes: Any) -> list[tuple[tuple[int, int, int, int], float]]:
    """Frontal faces as (x, y, w, h) boxes, each with its tilt in degrees (0 unless both eyes are found)."""
    smallest = max(24, min(gray.shape) // 16)
    found = faces.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    return [(box, _tilt(gray, box, eyes)) for box in (_box(found_box) for found_box in found)]


def _box(box: Any) -> tuple[int, int, int, int]:
    x, y, w, h = (int(value) for value in box)
    return x, y, w, h


def _tilt(gray: np.ndarray, box: tuple[int, int, int, int], eyes: Any) -> float:
    """The angle of the line from the left eye to the right, found in the face's upper part scaled to a
    fixed width (the eye cascade misses the eyes of small faces); the largest candidate on each side."""
    x, y, w, h = box
    scale = _EYE_SEARCH_WIDTH / w
    upper = cv2.resize(gray[y : y + h * 5 // 8, x : x + w], None, fx=scale, fy=scale)
    minimum = _EYE_SEARCH_WIDTH // 12
    found = [_box(eye) for eye in eyes.detectMultiScale(upper, 1.1, 5, minSize=(minimum, minimum))]
    left = [eye for eye in found if eye[0] + eye[2] / 2 < _EYE_SEARCH_WIDTH / 2]
    right = [eye for eye in found if eye not in left]
    if not left or not right:
        return 0.0
    (x1, y1, w1, h1), (x2, y2, w2, h2) = max(left, key=lambda e: e[2]), max(right, key=lambda e: e[2])
    angle = math.degrees(math.atan2((y2 + h2 / 2) - (y1 + h1 / 2), (x2 + w2 / 2) - (x1 + w1 / 2)))
    return angle if abs(angle) <= _MAX_TILT_DEGREES else 0.0


def crop_transform(box: tuple[int, int, int, int], tilt: float) -> np.ndarray:
    """The affine map from image pixels to the 512×512 aligned crop: centred, scaled, rotated level."""
    x, y, w, h = box
    side = _CROP_PER_BOX * max(w, h)
    centre = (x + w / 2, y + h / 2 - _CENTRE_SHIFT * side)
    transform = cv2.getRotationMatrix2D(centre, tilt, FACE_SIZE / side)
    transform[:, 2] += np.array([FACE_SIZE / 2, FACE_SIZE / 2]) - np.array(centre)
    return transform


def _feathered_mask() -> np.ndarray:
    mask = np.zeros((FACE_SIZE, FACE_SIZE), dtype=np.float32)
    mask[_FEATHER:-_FEATHER, _FEATHER:-_FEATHER] = 1
    return cv2.GaussianBlur(mask, (0, 0), _FEATHER / 2)


def cascades() -> tuple[Any, Any]:
    folder = _cascade_folder()
    return (
        cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_default.xml")),
        cv2.CascadeClassifier(str(folder / "haarcascade_eye.xml")),
    )
