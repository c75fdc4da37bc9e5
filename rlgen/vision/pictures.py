"""The pictures a person looks at instead of reading numbers: a confusion matrix, a grid of
images with a caption under each (misclassified digits with their true / predicted labels,
generated captions, ...). Each returns a uint8 ``(3, H, W)`` tensor, which TensorBoard
(``RunLogger.image``) and ``rlgen.data.images.save_image`` both take.

Drawn with Pillow and its built-in font, so no plotting library is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()) \
        .permute(2, 0, 1)


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def confusion_matrix_image(confusion: torch.Tensor, class_names: Sequence[str] | None = None,
                           cell: int = 28) -> torch.Tensor:
    """``confusion[i, j]`` = how many examples of true class ``i`` were predicted ``j``, drawn
    as a grid (rows true, columns predicted) shaded by the fraction of each row, the count in
    each cell (when it fits) and the class names along both axes."""
    confusion = torch.as_tensor(confusion).detach().cpu().long()
    k = confusion.shape[0]
    if confusion.shape != (k, k):
        raise ValueError(f"a confusion matrix is (K, K), got {tuple(confusion.shape)}")
    names = [str(n) for n in (class_names or range(k))]
    font = _font(max(9, min(13, cell // 2)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_width(probe, n, font) for n in names) + 8
    title = "rows: true class, columns: predicted"
    title_h = 18
    width = max(label_w + k * cell + 4, _text_width(probe, title, font) + 6)
    height = title_h + label_w + k * cell + 4
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((2, 2), title, fill="black", font=font)
    rows = confusion.sum(1, keepdim=True).clamp_min(1)
    shade = (confusion.float() / rows).numpy()
    top = title_h + label_w
    for j, name in enumerate(names):  # column labels, written vertically
        label = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(label).text((2, cell // 4), name, fill="black", font=font)
        image.paste(label.rotate(90, expand=True), (label_w + j * cell, title_h))
    for i, name in enumerate(names):
        draw.text((2, top + i * cell + cell // 4), name, fill="black", font=font)
        for j in range(k):
            level = int(255 * (1 - shade[i, j]))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1],
                           fill=(level, level, 255), outline=(200, 200, 200))
            count = str(int(confusion[i, j]))
            if confusion[i, j] and _text_width(draw, count, font) < cell - 2:
                draw.text((x0 + 2, y0 + cell // 4), count,
                          fill="white" if shade[i, j] > 0.5 else "black", font=font)
    return _to_tensor(image)


def captioned_grid(images: torch.Tensor, captions: Sequence[str], ncol: int = 8,
                   min_side: int = 64) -> torch.Tensor:
    """``(N, C, H, W)`` images in [0, 1] tiled ``ncol`` to a row, each with its caption below;
    small images are scaled up (nearest) to at least ``min_side`` pixels so the text fits."""
    if images.dim() != 4 or len(captions) != images.shape[0]:
        raise ValueError(f"need (N, C, H, W) images and N captions, got {tuple(images.shape)} "
                         f"and {len(captions)} captions")
    n, c, h, w = images.shape
    scale = max(1, -(-min_side // min(h, w)))
    font = _font(11)
    cap_h = 16 * max(1, max(caption.count("\n") + 1 for caption in captions)) if n else 16
    tile_w, tile_h = w * scale + 4, h * scale + cap_h + 4
    ncol = max(1, min(ncol, n))
    nrow = max(1, -(-n // ncol))
    sheet = Image.new("RGB", (ncol * tile_w, nrow * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    for i in range(n):
        array = pixels[i].permute(1, 2, 0).numpy()
        tile = Image.fromarray(array[..., 0] if c == 1 else array[..., :3])
        tile = tile.resize((w * scale, h * scale), Image.NEAREST).convert("RGB")
        r, col = divmod(i, ncol)
        x0, y0 = col * tile_w + 2, r * tile_h + 2
        sheet.paste(tile, (x0, y0))
        draw.multiline_text((x0, y0 + h * scale + 1), captions[i], fill="black", font=font,
                            spacing=2)
    return _to_tensor(sheet)


def colorize(mask: torch.Tensor, palette: torch.Tensor, ignore_index: int | None = 255,
             ignore_color: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """Class indices ``(H, W)`` -> uint8 ``(3, H, W)`` on the CPU in the palette's colours
    (``(K, 3)`` uint8); ignored pixels in ``ignore_color`` (white: no class), values outside
    the palette black. The dataset's ``colorize`` with a picture's defaults."""
    from rlgen.data.segmentation import colorize as colour_masks

    return colour_masks(torch.as_tensor(mask).cpu(), torch.as_tensor(palette).cpu(),
                        ignore_index, ignore_color)


def _as_uint8(image: torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(image).detach().cpu()
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def overlay(image: torch.Tensor, mask: torch.Tensor, palette: torch.Tensor,
            classes: Sequence[str] | None = None, alpha: float = 0.5,
            ignore_index: int | None = 255) -> torch.Tensor:
    """The mask's colours blended over the image (``alpha`` of colour), with a legend of the
    classes present to the right when ``classes`` is given: uint8 ``(3, H, W')``."""
    base = _as_uint8(image).float()
    colours = colorize(mask, palette, ignore_index).float()
    keep = torch.as_tensor(mask).cpu() == ignore_index if ignore_index is not None else None
    blended = (1 - alpha) * base + alpha * colours
    if keep is not None:
        blended[:, keep] = base[:, keep]
    result = blended.round().to(torch.uint8)
    if classes is None:
        return result
    present = sorted(int(c) for c in torch.as_tensor(mask).unique().tolist()
                     if c != ignore_index and 0 <= c < len(classes))
    return _beside(result, legend([classes[c] for c in present],
                                  torch.as_tensor(palette)[present], height=result.shape[1]))


def legend(names: Sequence[str], colours: torch.Tensor, height: int | None = None
           ) -> torch.Tensor:
    """A column of colour swatches with their class names: uint8 ``(3, H, W)``."""
    font = _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 24 + max([_text_width(probe, n, font) for n in names] or [10]) + 6
    rows = max(len(names), 1)
    sheet = Image.new("RGB", (width, max(height or 0, rows * 16 + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, colour) in enumerate(zip(names, colours.tolist())):
        y = 2 + i * 16
        draw.rectangle([4, y + 2, 16, y + 13], fill=tuple(int(c) for c in colour),
                       outline=(0, 0, 0))
        draw.text((22, y + 1), name, fill="black", font=font)
    return _to_tensor(sheet)


def _beside(*images: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """uint8 ``(3, H_i, W_i)`` images side by side on white, top-aligned."""
    height = max(int(i.shape[1]) for i in images)
    width = sum(int(i.shape[2]) for i in images) + gap * (len(images) - 1)
    sheet = torch.full((3, height, width), 255, dtype=torch.uint8)
    x = 0
    for image in images:
        sheet[:, : image.shape[1], x: x + image.shape[2]] = image
        x += image.shape[2] + gap
    return sheet


def segmentation_triplets(images: torch.Tensor, truths: torch.Tensor, predictions: torch.Tensor,
                          palette: torch.Tensor, ignore_index: int | None = 255) -> torch.Tensor:
    """One row per example: image | truth | prediction (colour masks), uint8 ``(3, H, W)``."""
    rows = [_beside(_as_uint8(image), colorize(truth, palette, ignore_index),
                    colorize(pred, palette, ignore_index))
            for image, truth, pred in zip(images, truths, predictions)]
    width = max(int(r.shape[2]) for r in rows)
    padded = [torch.nn.functional.pad(r, (0, width - r.shape[2]), value=255) for r in rows]
    gap = torch.full((3, 4, width), 255, dtype=torch.uint8)
    return torch.cat([part for row in padded for part in (row, gap)][:-1], dim=1)
