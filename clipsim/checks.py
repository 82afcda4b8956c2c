"""Argument rules shared by the library, the CLI (`argparse` types) and job parameters.

Each check returns the value in its canonical type or raises `ArgumentError` naming the value and the fix, so a bad
argument is refused before anything is written, with the same message wherever it came from.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from clipsim.errors import ArgumentError

SCREEN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # clipsim.search.exact.PRECISIONS plus 'auto'


def check_int(value: object, what: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum] (bools and floats with a fraction are refused).

    Args:
        value: the value given (int, or a string of digits from a command line or JSON).
        what: its name for the message, e.g. '--k' or "params['k']".
        minimum, maximum: inclusive bounds (None: unbounded).

    Returns:
        The value as int.

    Raises:
        ArgumentError: not an integer, or out of range.
    """
    number = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)  # numpy integers too
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise ArgumentError(f"{what} = {value!r} is not an integer; give a whole number{_bounds(minimum, maximum)}")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise ArgumentError(f"{what} = {number} is out of range; give a whole number{_bounds(minimum, maximum)}")
    return number


def check_float(value: object, what: str, minimum: float | None = None, maximum: float | None = None,
                above: float | None = None) -> float:
    """A finite number in [minimum, maximum] (and > above when given).

    Raises:
        ArgumentError: not a finite number, or out of range.
    """
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    rule = _bounds(minimum, maximum) + (f", above {above}" if above is not None else "")
    if number is None or not math.isfinite(number):
        raise ArgumentError(f"{what} = {value!r} is not a finite number; give a number{rule}")
    if ((minimum is not None and number < minimum) or (maximum is not None and number > maximum)
            or (above is not None and number <= above)):
        raise ArgumentError(f"{what} = {number:g} is out of range; give a number{rule}")
    return number


def check_bool(value: object, what: str) -> bool:
    """A JSON boolean.

    Raises:
        ArgumentError: anything but True or False.
    """
    if not isinstance(value, bool):
        raise ArgumentError(f"{what} = {value!r} must be true or false")
    return value


def check_choice(value: object, what: str, choices: Iterable[str]) -> str:
    """One of `choices`.

    Raises:
        ArgumentError: not one of them.
    """
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"{what} = {value!r} is not known; use one of {', '.join(choices)}")
    return value


def check_str_list(value: object, what: str) -> list[str]:
    """A non-empty list of strings, or one string (made a one-item list).

    Raises:
        ArgumentError: anything else.
    """
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise ArgumentError(f"{what} = {value!r} must be a non-empty list of names, e.g. [\"val\", \"sketch\"]")
    return list(value)


def check_device(device: object, what: str = "device", here: bool = True) -> str:
    """A torch device string this machine has: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'.

    Args:
        device: the device given.
        what: its name for the message.
        here: also require that this machine has it (False for a job that runs elsewhere, e.g. on SLURM).

    Returns:
        The device string, unchanged.

    Raises:
        ArgumentError: not a device name, or a GPU that is not visible here.
    """
    if device is None or device == "auto":
        return "auto"
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError) as err:
        raise ArgumentError(f"{what} = {device!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"{what} = {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if not here:
        return str(device)
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ArgumentError(f"{what} = {device!r} but no CUDA GPU is visible on this machine; use --device cpu "
                                "(or auto), or run where a GPU is")
        if dev.index is not None and dev.index >= count:
            raise ArgumentError(f"{what} = {device!r} but only {count} CUDA GPU(s) are visible (cuda:0.."
                                f"cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError(f"{what} = {device!r} but Apple MPS is not available here; use cpu or auto")
    return str(device)


def check_screen_precision(precision: object, device: object = "auto", what: str = "precision",
                           here: bool = True) -> str:
    """A search screen precision that works on `device` (fp16 needs a CUDA GPU).

    Raises:
        ArgumentError: unknown precision, or fp16 without a GPU (here: on this machine).
    """
    check_choice(precision, what, SCREEN_PRECISIONS)
    if precision == "fp16" and not here:
        if str(device).startswith(("cpu", "mps")):
            raise ArgumentError(f"{what} = 'fp16' needs a CUDA device, not {device!r}; use bf16, fp32 or auto")
    elif precision == "fp16":
        import torch

        dev = check_device(device)
        on_gpu = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
        if not on_gpu:
            raise ArgumentError(f"{what} = 'fp16' needs a CUDA GPU (CPU fp16 products are slow); use bf16, fp32 or "
                                "auto on this machine")
    return str(precision)


def check_search_args(k: object, block_rows: object, precision: object, device: object, here: bool = True) -> None:
    """The arguments of an exact search (`search`, `search_part`, the search job kinds).

    Args:
        k, block_rows, precision, device: as given to `clipsim.search.search`.
        here: the search runs on this machine (False: check the device names only).

    Raises:
        ArgumentError: k or block_rows below 1, an unknown device or precision, fp16 on a CPU.
    """
    check_int(k, "k (neighbours per test image)", minimum=1, maximum=100_000)
    check_int(block_rows, "block_rows (train rows per block)", minimum=1)
    check_device(device, here=here)
    check_screen_precision(precision, device, here=here)


def check_embed_args(batch_size: object, workers: object, device: object, shard_size: object = 1,
                     here: bool = True) -> None:
    """The arguments of embedding (`embed_dataset`, the embed job kinds).

    Raises:
        ArgumentError: batch_size or shard_size below 1, workers below 0, an unknown device.
    """
    check_int(batch_size, "batch_size (images per forward pass)", minimum=1)
    check_int(workers, "workers (image decoding processes; 0 = none)", minimum=0, maximum=256)
    check_int(shard_size, "shard_size (records per shard)", minimum=1)
    check_device(device, here=here)


def parse_ids(text: str, what: str = "--ids") -> list[int]:
    """'1,5,9' -> [1, 5, 9]: comma-separated non-negative row ids.

    Raises:
        ArgumentError: an item that is not a whole number >= 0.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ArgumentError(f"{what} {text!r} holds no ids; give comma-separated row ids, e.g. {what} 0,5,9")
    return [check_int(t, f"{what} item", minimum=0) for t in items]


def _bounds(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_datasets(ws, names: object, what: str = "datasets", role: str | None = None) -> list[str]:
    """Names of registered datasets (of `role` when given), e.g. the train and test sets of a search.

    Args:
        ws: the workspace.
        names: one name or a list of names.
        what: the argument's name for the message, e.g. '--tests'.
        role: 'train' or 'test' to require that role (None: any).

    Returns:
        The names as a list.

    Raises:
        ArgumentError: not a list of names, or a name that is not registered (with that role).
    """
    known = ws.dataset_names(role)
    if isinstance(names, (list, tuple)) and not names:
        kind = f"{role} set" if role else "dataset"
        raise ArgumentError(f"{what}: workspace {ws.root} has no {kind} registered; register one first "
                            f"(`python -m clipsim register --workspace {ws.root} ...`)")
    names = check_str_list(names, what)
    missing = [n for n in names if n not in known]
    if missing:
        kind = f"{role} set" if role else "dataset"
        raise ArgumentError(f"{what}: no dataset {', '.join(map(repr, missing))} registered"
                            f"{' as a ' + kind if role else ''} in workspace {ws.root} (registered {kind}s: "
                            f"{', '.join(known) or 'none'}); register it first or fix the name")
    return names
