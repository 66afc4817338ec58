"""Checkpoints: full training state, written atomically; model weights as safetensors.

A checkpoint holds only tensors and plain Python values, so it loads with
``torch.load(weights_only=True)``. Randomness needs no saved state: data order, flips and CPE
crops are functions of (seed, step), so the step is the data position.

Every file is written through a Python file object (a temporary file, then an atomic rename), so a
full disk raises ``OSError(ENOSPC)`` naming the file (torch's own C++ writer says only
``basic_ios::clear: iostream error``), the temporary file is removed, and the mode is the usual
0644 under the umask (safetensors' own writer makes 0600).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from radio.errors import RadioError
from radio.store.lease import pid_alive
from radio.store.objects import named


class WeightsError(RadioError):
    """A weights or checkpoint file that cannot be read (not safetensors, a pickle, truncated, ...)."""


def temp_name(path: Path) -> Path:
    """The temporary file :func:`atomic_write` writes ``path`` through (one per process)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    On any failure the temporary file is removed; an ``OSError`` without a file name (a failed
    ``write``) is raised again naming ``path``, so a full disk reads "no space left on device: PATH".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = _os_error(e)
        if cause is not None and (cause is not e or cause.filename is None):
            # a failed write names no file (name it), and torch.save wraps it in a RuntimeError
            raise named(cause, path) from None
        raise


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError with an errno that ``e`` is or was raised while handling (torch.save catches
    its file's ENOSPC and raises ``RuntimeError: ... unexpected pos``)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove ``.NAME.tmpPID`` files in ``folder`` whose process is gone (a killed run's half-written
    checkpoint); a live process's temporary file is left alone. Returns the removed paths."""
    removed = []
    for tmp in folder.glob(".*.tmp*") if folder.is_dir() else []:
        pid = tmp.name.rpartition(".tmp")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename."""
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, require_model: bool = True, safe_globals: tuple = ()) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; anything else (a pickle of other objects,
    random bytes, a truncated file) is one :class:`WeightsError` line, never torch's advice to
    load it with ``weights_only=False``. ``safe_globals``: plain data classes the weights-only
    unpickler may build besides tensors (NVIDIA RADIO's ``argparse.Namespace`` args);
    ``require_model=False`` returns any dict (``--init`` reads foreign checkpoints)."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; its directory is at the end
        raise WeightsError(f"{path}: not a radio checkpoint (not a torch zip archive: truncated, or another format)")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4 ...": about the file we refuse anyway
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(list(safe_globals)):
                state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:  # the file itself (unreadable, ...): not the content's fault
        raise
    except pickle.UnpicklingError:
        raise WeightsError(
            f"{path}: not a radio checkpoint (it holds objects other than tensors, which radio never unpickles)"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, EOFError, ... on damaged archives
        raise WeightsError(f"{path}: not a radio checkpoint ({_first_sentence(e)})") from None
    if not isinstance(state, dict) or (require_model and not isinstance(state.get("model"), dict)):
        raise WeightsError(f"{path}: not a radio checkpoint (no 'model' state)")
    return state


def _first_sentence(e: BaseException) -> str:
    """The gist of a library's error: its first sentence, without the advice that follows or
    safetensors' "Error while deserializing header:" preamble."""
    text = str(e).strip().splitlines()
    gist = (text[0] if text else type(e).__name__).split(". ")[0].rstrip(". ")
    return re.sub(r"^Error while deserializing( header)?: ", "", gist)


def weights_bytes(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """``state_dict`` as safetensors bytes (on the CPU, contiguous)."""
    return save({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, metadata=metadata)


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> str:
    """Write ``state_dict`` as safetensors to ``path`` atomically; returns the file's sha256 (hex)."""
    data = weights_bytes(state_dict, metadata)
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; a file that is not one is one :class:`WeightsError` line."""
    return load_weights_bytes(Path(path).read_bytes(), path)


def load_weights_bytes(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise WeightsError(f"{path}: not a safetensors file ({_first_sentence(e)})") from None
