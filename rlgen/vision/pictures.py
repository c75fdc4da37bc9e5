"""The pictures a person looks at instead of reading numbers: a confusion matrix, a grid of
images with a caption under each (misclassified digits with their true / predicted labels,
generated captions, ...), segmentation overlays, and labelled detection boxes with their scores
(``draw_boxes``; ``detection_panels``: predictions beside the dashed truth). Each returns a
uint8 ``(3, H, W)`` tensor, which TensorBoard (``RunLogger.image``) and
``rlgen.data.images.save_image`` both take.

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
                          palette: torch.Tensor, ignore_index: int | None = 255,
                          scale: int = 1) -> torch.Tensor:
    """One row per example: image | truth | prediction (colour masks), uint8 ``(3, H, W)``;
    ``scale`` enlarges every pixel to a ``scale x scale`` block (small images)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")

    def enlarge(picture: torch.Tensor) -> torch.Tensor:
        return picture.repeat_interleave(scale, -2).repeat_interleave(scale, -1)

    rows = [_beside(*(enlarge(p) for p in (_as_uint8(image),
                                           colorize(truth, palette, ignore_index),
                                           colorize(pred, palette, ignore_index))))
            for image, truth, pred in zip(images, truths, predictions)]
    width = max(int(r.shape[2]) for r in rows)
    padded = [torch.nn.functional.pad(r, (0, width - r.shape[2]), value=255) for r in rows]
    gap = torch.full((3, 4, width), 255, dtype=torch.uint8)
    return torch.cat([part for row in padded for part in (row, gap)][:-1], dim=1)


def class_colours(num_classes: int) -> torch.Tensor:
    """``num_classes`` distinct, saturated colours, uint8 ``(K, 3)``: hues spread by the
    golden angle (neighbouring labels get far-apart hues), at alternating brightness."""
    import colorsys

    colours = []
    for k in range(num_classes):
        hue = (k * 0.618033988749895) % 1.0
        value = 0.95 if k % 2 == 0 else 0.75
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, value)])
    return torch.tensor(colours, dtype=torch.uint8).reshape(-1, 3)


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor,
               scores: torch.Tensor | None = None, classes: Sequence[str] | None = None,
               colours: torch.Tensor | None = None, scale: int = 1, width: int = 2,
               dashed: bool = False) -> torch.Tensor:
    """Boxes ``(K, 4)`` xyxy in the image's pixels drawn over ``image`` (``(C, H, W)``, uint8
    or [0, 1]), each in its class's colour with a label tag ``name score`` above its top-left
    corner; the picture is first enlarged ``scale`` times (nearest) so small images have room
    for the text. ``dashed`` draws the outlines dashed (e.g. for ground truth)."""
    base = _as_uint8(image)
    h, w = base.shape[1:]
    boxes = torch.as_tensor(boxes).detach().float().cpu().reshape(-1, 4)
    labels = torch.as_tensor(labels).detach().long().cpu().reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"draw_boxes: {len(boxes)} boxes, {len(labels)} labels and "
                         f"{len(scores) if scores is not None else 'no'} scores; they must match")
    count = max(int(labels.max()) + 1 if len(labels) else 1, len(classes or ()))
    colours = class_colours(count) if colours is None else torch.as_tensor(colours)
    picture = Image.fromarray(base.permute(1, 2, 0).numpy()).resize((w * scale, h * scale),
                                                                    Image.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = _font(11)
    order = range(len(boxes)) if scores is None else \
        torch.argsort(torch.as_tensor(scores).float().cpu()).tolist()  # best drawn last, on top
    for i in order:
        x1, y1, x2, y2 = (float(v) * scale for v in boxes[i])
        colour = tuple(int(c) for c in colours[int(labels[i]) % len(colours)])
        if dashed:
            _dashed_rectangle(draw, (x1, y1, x2, y2), colour, width)
        else:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        name = classes[int(labels[i])] if classes is not None and int(labels[i]) < len(classes) \
            else str(int(labels[i]))
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        tw = _text_width(draw, text, font)
        ty = y1 - 13 if y1 >= 13 else y1
        draw.rectangle([x1, ty, x1 + tw + 3, ty + 12], fill=colour)
        brightness = sum(colour) / 3
        draw.text((x1 + 2, ty), text, fill="black" if brightness > 140 else "white", font=font)
    return _to_tensor(picture)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: tuple[float, ...], colour, width: int,
                      dash: int = 5) -> None:
    x1, y1, x2, y2 = box
    for (a, b), (c, d) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)),
                           ((x1, y2), (x1, y1))):
        length = max(abs(c - a), abs(d - b))
        steps = max(1, int(length // dash))
        for k in range(0, steps, 2):
            t0, t1 = k / steps, min(1.0, (k + 1) / steps)
            draw.line([(a + (c - a) * t0, b + (d - b) * t0), (a + (c - a) * t1, b + (d - b) * t1)],
                      fill=colour, width=width)


def detection_panels(images: torch.Tensor, predictions: Sequence[dict], targets: Sequence[dict],
                     classes: Sequence[str] | None = None, min_side: int = 192) -> torch.Tensor:
    """One row per image: predictions (boxes with scores) | truth (boxes, dashed), each image
    enlarged to at least ``min_side`` pixels; uint8 ``(3, H, W)``."""
    if not (len(images) == len(predictions) == len(targets)):
        raise ValueError(f"detection_panels: {len(images)} images, {len(predictions)} "
                         f"predictions and {len(targets)} targets; they must match")
    count = len(classes) if classes is not None else 1 + max(
        [int(t["labels"].max()) for t in targets if len(t["labels"])] + [0])
    colours = class_colours(count)
    rows = []
    for image, pred, truth in zip(images, predictions, targets):
        scale = max(1, -(-min_side // min(int(image.shape[1]), int(image.shape[2]))))
        rows.append(_beside(
            draw_boxes(image, pred["boxes"], pred["labels"], pred["scores"], classes, colours,
                       scale),
            draw_boxes(image, truth["boxes"], truth["labels"], None, classes, colours, scale,
                       dashed=True)))
    width = max(int(r.shape[2]) for r in rows)
    padded = [torch.nn.functional.pad(r, (0, width - r.shape[2]), value=255) for r in rows]
    gap = torch.full((3, 4, width), 255, dtype=torch.uint8)
    return torch.cat([part for row in padded for part in (row, gap)][:-1], dim=1)
