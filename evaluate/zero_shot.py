"""Zero-shot classification: the student's CLIP-adaptor summary against the CLIP teacher's text
embeddings of class prompts (notes/radio-code.md §2.10, RADIO's ``zero_shot_imagenet.py``).

Prompts: a class's display name is its folder name with underscores as spaces
(``hubble_deep_field`` → ``hubble deep field``); each template's ``{name}`` is replaced by it.
The default template is ``"a photo of a {name}."``; more templates (e.g. OpenAI's ImageNet
ensemble) are averaged: every prompt's embedding is L2-normalized, the class's mean is
normalized again. An image is assigned the class of highest cosine similarity (for SigLIP heads
the logit scale and bias change the scores but not their order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = ("a photo of a {name}.",)


def class_display_name(folder: str) -> str:
    return folder.replace("_", " ")


def build_prompts(classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[list[str]]:
    """``prompts[c][t]``: template ``t`` filled with class ``c``'s display name."""
    for t in templates:
        if "{name}" not in t:
            raise ValueError(f"template {t!r} has no {{name}} placeholder")
    return [[t.format(name=class_display_name(c)) for t in templates] for c in classes]


def text_classifier(encode_text: Callable[[list[str]], torch.Tensor], prompts: list[list[str]]) -> torch.Tensor:
    """Class embeddings ``[K, E]`` (unit norm): the normalized mean of each class's normalized
    prompt embeddings. ``encode_text(strings) → [n, E]``."""
    rows = []
    for class_prompts in prompts:
        e = F.normalize(encode_text(class_prompts).double(), dim=-1).mean(dim=0)
        rows.append(F.normalize(e, dim=-1))
    return torch.stack(rows)


def zero_shot_scores(image_embeddings: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[N, K]`` of image embeddings ``[N, E]`` to class embeddings ``[K, E]``."""
    if image_embeddings.shape[-1] != classifier.shape[-1]:
        raise ValueError(
            f"image embeddings have {image_embeddings.shape[-1]} dims, the text embeddings {classifier.shape[-1]}"
        )
    return F.normalize(image_embeddings.double(), dim=-1) @ classifier.double().T
